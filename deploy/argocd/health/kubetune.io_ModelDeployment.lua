-- Argo CD health check for kubetune.io/ModelDeployment (Lua 5.1, as Argo CD runs it).
-- Healthy: Ready=True (drift is reported in the message, it is not an outage).
-- Degraded: phase Failed or Degraded, or Degraded=True, or Ready=False with no rollout going on.
-- Progressing: waiting for training, deploying, or rolling out a new revision.

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local hs = {}
local status = obj.status
local generation = obj.metadata and obj.metadata.generation

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator"
  return hs
end

local ready = condition(status, "Ready")
local progressing = condition(status, "Progressing")
local degraded = condition(status, "Degraded")
local drifted = condition(status, "Drifted")

if status.phase == "Failed" or status.phase == "Degraded" or is_true(degraded) then
  hs.status = "Degraded"
  hs.message = (degraded and degraded.message) or (ready and ready.message) or ("Phase " .. status.phase)
  return hs
end

if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = "Serving"
  if status.endpoint ~= nil then
    hs.message = hs.message .. " at " .. status.endpoint
  end
  if is_true(drifted) then
    hs.message = hs.message .. "; drift detected: " .. (drifted.message or drifted.reason or "")
  end
  return hs
end

if is_true(progressing) or status.phase == "WaitingForTraining" or status.phase == "Deploying"
    or status.phase == "Pending" or status.phase == nil then
  hs.status = "Progressing"
  hs.message = (progressing and progressing.message) or (ready and ready.message) or (status.phase or "Pending")
  return hs
end

hs.status = "Degraded"
hs.message = (ready and ready.message) or "Not ready"
return hs
