-- Runs each pgbackup health check, as Argo CD does (Lua 5.1, the object in `obj`), on
-- status fixtures: `lua5.1 manifests/gitops/argocd/health/health_test.lua` from the
-- repository root. Exits 1 on the first wrong answer.

local dir = arg[0]:match("^(.*)/[^/]*$") or "."

local function read(name)
  local f = assert(io.open(dir .. "/" .. name, "r"))
  local text = f:read("*a")
  f:close()
  return text
end

-- The check as argocd-cm-health.yaml carries it: the shared part, then the kind's.
local function check(file)
  return read("common.lua") .. "\n" .. read(file)
end

local function run(file, obj)
  local chunk = assert(loadstring(check(file), file))
  setfenv(chunk, { obj = obj, ipairs = ipairs, pairs = pairs, type = type })
  return chunk()
end

local function cond(type_, status, reason, message)
  return { type = type_, status = status, reason = reason, message = message or "" }
end

local function object(generation, status, spec)
  return { metadata = { generation = generation }, spec = spec or {}, status = status }
end

local failures = 0
local function expect(file, name, obj, status, message_part)
  local hs = run(file, obj)
  local ok = hs.status == status and (message_part == nil or string.find(hs.message or "", message_part, 1, true))
  if not ok then
    failures = failures + 1
    print(string.format("FAIL %s %s: got %s (%s), want %s", file, name, tostring(hs.status), tostring(hs.message), status))
  end
end

-- Backups (PostgresBackup, VolumeSnapshotBackup).
expect("backup.lua", "new object, no status", object(1, nil), "Progressing")
expect("backup.lua", "status of an older generation", object(2, { observedGeneration = 1, phase = "Completed" }), "Progressing")
expect("backup.lua", "completed", object(1, { observedGeneration = 1, phase = "Completed", message = "stored",
  conditions = { cond("Ready", "True", "Completed") } }), "Healthy", "stored")
expect("backup.lua", "failed", object(1, { observedGeneration = 1, phase = "Failed", message = "refused the login",
  conditions = { cond("Ready", "False", "DatabaseLoginFailed") } }), "Degraded", "refused the login")
expect("backup.lua", "waiting for a missing Secret", object(1, { observedGeneration = 1, phase = "Pending",
  message = "Secret shop/pg-auth does not exist", conditions = { cond("Ready", "False", "SecretNotFound"),
  cond("Progressing", "False", "SecretNotFound") } }), "Degraded", "does not exist")
expect("backup.lua", "Job starting", object(1, { observedGeneration = 1, phase = "Pending",
  conditions = { cond("Ready", "False", "Pending"), cond("Progressing", "True", "JobCreated") } }), "Progressing")
expect("backup.lua", "retrying on its own after a lost session", object(1, { observedGeneration = 1,
  phase = "Pending", message = "attempt 1 of 3 failed and was rolled back",
  conditions = { cond("Ready", "False", "SessionLost"), cond("Progressing", "True", "Retrying") } }), "Progressing")
expect("backup.lua", "running", object(1, { observedGeneration = 1, phase = "Running",
  conditions = { cond("Ready", "False", "Running") } }), "Progressing")
expect("backup.lua", "completed, restore test running", object(1, { observedGeneration = 1,
  phase = "Completed", message = "stored", conditions = { cond("Ready", "True", "Completed"),
  cond("Verified", "Unknown", "Verifying") } }), "Healthy", "stored")
expect("backup.lua", "completed, restore test failed", object(1, { observedGeneration = 1,
  phase = "Completed", message = "stored", conditions = { cond("Ready", "True", "Completed"),
  cond("Verified", "False", "VerificationFailed") } }), "Degraded", "restore test failed")

-- BackupSchedule.
expect("backupschedule.lua", "no status", object(1, nil), "Progressing")
expect("backupschedule.lua", "active and streaming", object(1, { observedGeneration = 1, conditions = {
  cond("Ready", "True", "Active", "backups run"), cond("WALArchiving", "True", "Streaming") } }), "Healthy")
expect("backupschedule.lua", "archiving broken", object(1, { observedGeneration = 1, conditions = {
  cond("Ready", "True", "Active"), cond("WALArchiving", "False", "ArchiverNotReady", "no host replication line") } }),
  "Degraded", "no host replication line")
expect("backupschedule.lua", "lag unknown yet", object(1, { observedGeneration = 1, conditions = {
  cond("Ready", "True", "Active"), cond("WALArchiving", "Unknown", "Starting") } }), "Healthy")
expect("backupschedule.lua", "invalid cron", object(1, { observedGeneration = 1, conditions = {
  cond("Ready", "False", "InvalidSchedule", "minute field") } }), "Degraded", "minute field")
expect("backupschedule.lua", "suspended", object(1, { observedGeneration = 1, conditions = {
  cond("Ready", "True", "Suspended", "suspended") } }, { suspend = true }), "Suspended")
expect("backupschedule.lua", "changed spec not seen yet", object(3, { observedGeneration = 2, conditions = {
  cond("Ready", "True", "Active") } }), "Progressing")

-- PointInTimeRestore.
expect("pointintimerestore.lua", "validating", object(1, { observedGeneration = 1, phase = "Validating" }), "Progressing")
expect("pointintimerestore.lua", "restoring", object(1, { observedGeneration = 1, phase = "Restoring" }), "Progressing")
expect("pointintimerestore.lua", "completed", object(1, { observedGeneration = 1, phase = "Completed", message = "restored" }), "Healthy")
expect("pointintimerestore.lua", "rolled back", object(1, { observedGeneration = 1, phase = "RolledBack",
  message = "old data put back" }), "Degraded", "old data put back")
expect("pointintimerestore.lua", "failed", object(1, { observedGeneration = 1, phase = "Failed" }), "Degraded")

if failures > 0 then
  print(failures .. " health check(s) wrong")
  os.exit(1)
end
print("health checks: all fixtures answered as expected")
