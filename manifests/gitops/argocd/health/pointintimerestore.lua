-- PointInTimeRestore: Healthy once Completed, Degraded when Failed or RolledBack,
-- Progressing through its phases.
local hs = {}
if stale(obj) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local phase = obj.status.phase
if phase == "Completed" then
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "RolledBack" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = obj.status.message or phase or ""
return hs
