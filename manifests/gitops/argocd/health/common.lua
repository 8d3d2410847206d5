-- Shared by the pgbackup health checks (prepended to each by the generator of
-- argocd-cm-health.yaml): the Ready condition and whether the status is current.
local function condition(obj, type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function stale(obj)
  return obj.status == nil
    or obj.status.observedGeneration == nil
    or (obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation)
end
