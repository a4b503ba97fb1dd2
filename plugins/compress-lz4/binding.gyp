{
  "targets": [
    {
      "target_name": "ferry_lz4",
      "sources": ["native/lz4.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "libraries": ["-l:liblz4.so.1"]
    }
  ]
}
