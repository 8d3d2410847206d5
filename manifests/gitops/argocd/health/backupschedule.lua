-- BackupSchedule: Healthy when Ready and WAL archiving (if on) streams; Suspended with
-- spec.suspend; Degraded when not Ready or when archiving is not working.
local hs = {}
if stale(obj) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local ready = condition(obj, "Ready")
local wal = condition(obj, "WALArchiving")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the schedule to be set up"
elseif ready.status ~= "True" then
  hs.status = "Degraded"
  hs.message = ready.message
elseif wal ~= nil and wal.status == "False" then
  hs.status = "Degraded"
  hs.message = "WAL archiving: " .. (wal.message or wal.reason or "")
elseif obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = ready.message
else
  hs.status = "Healthy"
  hs.message = ready.message
end
return hs
