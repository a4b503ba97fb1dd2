/**
 * The runtime Ferry deploys into a Windows guest for one session (`ferry-guest.ps1` in
 * `%TEMP%\ferry-<random>`, removed at the end). Windows PowerShell 5.1. Subcommands:
 *
 * - `run LIMIT SCRIPT`: runs a user script (`.ps1` with powershell.exe -File, `.cmd`/`.bat` with
 *   cmd.exe /c, anything else as a program), its output captured; after LIMIT seconds its whole
 *   process tree is killed (`taskkill /T /F`) and the exit code is 124 with a line saying so.
 * - `freeze LIMIT MODE VOLUME...`: the VSS snapshot set. Writes a DiskShadow script (`set context
 *   volatile`, `begin backup`, `add volume` each, `create`, `exec hold.cmd`, and `end backup` only
 *   for MODE `full`) and starts `diskshadow /s` outside the SSH session's job object (through
 *   `Win32_Process.Create`, so a dropped connection does not kill it half-way); waits until
 *   `create` has reported its shadow copies (or failed) and prints DiskShadow's output so far.
 *   The writers took part in `create` (PrepareForBackup, PrepareForSnapshot, Freeze, Thaw) and
 *   wait for BackupComplete while `hold.cmd` runs.
 * - `wait LIMIT` (run by `hold.cmd` inside DiskShadow): waits for the `release` file; after LIMIT
 *   seconds without one it writes `watchdog` and exits 1, so DiskShadow stops before `end backup`
 *   and, the context being volatile, deletes the shadow copies as it exits: the watchdog that
 *   releases the set when no `thaw` came (a killed backup server, a lost connection).
 * - `thaw`: writes `release`, waits (bounded) for DiskShadow to end the backup and exit, prints its
 *   output. `full`: `end backup` sent BackupComplete, writers record a full backup; `copy`: the set
 *   ends without it, writers record nothing.
 * - `abort`: writes `abort` and `release` and ends DiskShadow without `end backup` (killed when it
 *   does not exit within 20 s).
 */
export const RUNTIME_PS1 = String.raw`# Ferry guest runtime: deployed for one backup session and removed after it.
param([Parameter(Position = 0)][string]$Command, [Parameter(ValueFromRemainingArguments = $true)][string[]]$Rest)
$ErrorActionPreference = 'Stop'
$Dir = Split-Path -Parent $MyInvocation.MyCommand.Path

function Wait-DiskShadow([int]$Seconds) {
  $pidFile = Join-Path $Dir 'diskshadow.pid'
  if (-not (Test-Path $pidFile)) { return $true }
  $id = [int](Get-Content $pidFile)
  $deadline = (Get-Date).AddSeconds($Seconds)
  while ((Get-Date) -lt $deadline) {
    if (-not (Get-Process -Id $id -ErrorAction SilentlyContinue)) { Remove-Item $pidFile -Force; return $true }
    Start-Sleep -Milliseconds 200
  }
  return $false
}

switch ($Command) {
  'run' {
    $limit = [int]$Rest[0]; $script = $Rest[1]
    $out = Join-Path $Dir 'script.out'; $err = Join-Path $Dir 'script.err'
    switch -Regex ($script) {
      '\.ps1$' { $exe = 'powershell.exe'; $argv = @('-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-File', ('"' + $script + '"')) }
      '\.(cmd|bat)$' { $exe = 'cmd.exe'; $argv = @('/c', ('"' + $script + '"')) }
      default { $exe = 'cmd.exe'; $argv = @('/c', ('"' + $script + '"')) }
    }
    $p = Start-Process -FilePath $exe -ArgumentList $argv -NoNewWindow -PassThru -RedirectStandardOutput $out -RedirectStandardError $err
    $done = $p.WaitForExit($limit * 1000)
    if (-not $done) { & taskkill.exe /T /F /PID $p.Id | Out-Null }
    Get-Content $out, $err -ErrorAction SilentlyContinue | Write-Output
    if (-not $done) { Write-Output ('ferry-guest: ' + (Split-Path -Leaf $script) + ' was stopped after ' + $limit + ' s'); exit 124 }
    exit $p.ExitCode
  }
  'freeze' {
    $limit = [int]$Rest[0]; $mode = $Rest[1]; $volumes = $Rest[2..($Rest.Count - 1)]
    foreach ($f in 'release', 'abort', 'watchdog', 'vss.log') { Remove-Item (Join-Path $Dir $f) -Force -ErrorAction SilentlyContinue }
    $hold = Join-Path $Dir 'hold.cmd'
    Set-Content -Path $hold -Encoding ASCII -Value ('@powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "' + (Join-Path $Dir 'ferry-guest.ps1') + '" wait ' + $limit)
    $dsh = @('set verbose on', 'set context volatile', 'begin backup')
    foreach ($v in $volumes) { $dsh += ('add volume ' + $v) }
    $dsh += @('create', ('exec "' + $hold + '"'))
    if ($mode -eq 'full') { $dsh += 'end backup' }
    $dsh += 'exit'
    Set-Content -Path (Join-Path $Dir 'vss.dsh') -Encoding ASCII -Value $dsh
    $log = Join-Path $Dir 'vss.log'
    $line = 'cmd.exe /c diskshadow.exe /s "' + (Join-Path $Dir 'vss.dsh') + '" > "' + $log + '" 2>&1'
    $r = Invoke-CimMethod -ClassName Win32_Process -MethodName Create -Arguments @{ CommandLine = $line; CurrentDirectory = $Dir }
    if ($r.ReturnValue -ne 0) { Write-Output ('cannot start diskshadow: Win32_Process.Create returned ' + $r.ReturnValue); exit 2 }
    Set-Content -Path (Join-Path $Dir 'diskshadow.pid') -Value $r.ProcessId
    $deadline = (Get-Date).AddSeconds($limit)
    while ((Get-Date) -lt $deadline) {
      $text = Get-Content $log -Raw -ErrorAction SilentlyContinue
      if ($text -match 'Number of shadow copies listed') { Write-Output $text; exit 0 }
      if (-not (Get-Process -Id $r.ProcessId -ErrorAction SilentlyContinue)) { Write-Output $text; exit 1 }
      Start-Sleep -Milliseconds 200
    }
    Write-Output 'ferry-guest: diskshadow create did not finish in time'; exit 124
  }
  'wait' {
    $deadline = (Get-Date).AddSeconds([int]$Rest[0])
    while ((Get-Date) -lt $deadline) {
      if (Test-Path (Join-Path $Dir 'release')) { if (Test-Path (Join-Path $Dir 'abort')) { exit 1 } else { exit 0 } }
      Start-Sleep -Milliseconds 200
    }
    Set-Content -Path (Join-Path $Dir 'watchdog') -Value 'released by the watchdog'
    exit 1
  }
  'thaw' {
    Set-Content -Path (Join-Path $Dir 'release') -Value 'thaw'
    $ended = Wait-DiskShadow 120
    Get-Content (Join-Path $Dir 'vss.log') -Raw -ErrorAction SilentlyContinue | Write-Output
    if (Test-Path (Join-Path $Dir 'watchdog')) { Write-Output 'ferry-guest: the watchdog had released the set already' }
    if (-not $ended) { Write-Output 'ferry-guest: diskshadow did not exit'; exit 1 }
    exit 0
  }
  'abort' {
    Set-Content -Path (Join-Path $Dir 'abort') -Value 'abort'
    Set-Content -Path (Join-Path $Dir 'release') -Value 'abort'
    if (-not (Wait-DiskShadow 20)) { & taskkill.exe /T /F /PID ([int](Get-Content (Join-Path $Dir 'diskshadow.pid'))) | Out-Null }
    exit 0
  }
  default { Write-Output 'usage: ferry-guest.ps1 run|freeze|wait|thaw|abort'; exit 2 }
}
`;
