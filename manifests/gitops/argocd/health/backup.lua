-- PostgresBackup and VolumeSnapshotBackup: Healthy once Completed (Ready), Degraded when
-- Failed or waiting on something the user must fix (Ready=False with its reason),
-- Progressing while it runs.
local hs = {}
if stale(obj) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local ready = condition(obj, "Ready")
local phase = obj.status.phase
if phase == "Completed" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Pending" and ready ~= nil and ready.status == "False" and ready.reason ~= "Pending" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = obj.status.message or (ready and ready.message) or phase or ""
return hs
