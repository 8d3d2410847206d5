-- PostgresBackup and VolumeSnapshotBackup: Healthy once Completed (Ready), Degraded when
-- Failed, when its restore test failed (Verified=False), or waiting on something the user
-- must fix (Pending with Progressing=False), Progressing while it runs or retries on its
-- own.
local hs = {}
if stale(obj) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local ready = condition(obj, "Ready")
local progressing = condition(obj, "Progressing")
local verified = condition(obj, "Verified")
local phase = obj.status.phase
if phase == "Completed" and verified ~= nil and verified.status == "False" then
  hs.status = "Degraded"
  hs.message = "restore test failed: " .. (verified.message or verified.reason or "")
  return hs
elseif phase == "Completed" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Pending" and progressing ~= nil and progressing.status == "False" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = obj.status.message or (ready and ready.message) or phase or ""
return hs
