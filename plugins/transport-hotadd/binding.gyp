{
  "targets": [
    {
      "target_name": "ferry_seek",
      "sources": ["native/seek.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-Wall", "-Wextra"]
    }
  ]
}
