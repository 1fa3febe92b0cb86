-- Argo CD health check for kubetune.io/FineTuneJob (Lua 5.1, as Argo CD runs it).
-- Healthy: training succeeded and every evaluation gate passed.
-- Degraded: the run failed (with its real cause), the spec was rejected, or gates failed.
-- Suspended: spec.suspend is set. Progressing: anything still on its way.

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

local function is_false(c)
  return c ~= nil and c.status == "False"
end

local function failure_message(status, fallback)
  if status.failure ~= nil and status.failure.reason ~= nil then
    local text = status.failure.reason
    if status.failure.message ~= nil and status.failure.message ~= "" then
      text = text .. ": " .. status.failure.message
    end
    return text
  end
  return fallback
end

local function failed_gates(evaluation)
  local names = {}
  if evaluation ~= nil and evaluation.gates ~= nil then
    for _, g in ipairs(evaluation.gates) do
      if g.passed == false then
        local value = "n/a"
        if g.value ~= nil then
          value = tostring(g.value)
        end
        table.insert(names, g.metric .. " " .. value .. " (wanted " .. g.operator .. " " .. tostring(g.threshold) .. ")")
      end
    end
  end
  return table.concat(names, ", ")
end

local hs = {}
local status = obj.status
local spec = obj.spec or {}
local generation = obj.metadata and obj.metadata.generation

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator"
  return hs
end

local accepted = condition(status, "Accepted")
local succeeded = condition(status, "Succeeded")
local failed = condition(status, "Failed")
local suspended = condition(status, "Suspended")

if is_false(accepted) then
  hs.status = "Degraded"
  hs.message = "Spec rejected: " .. (accepted.message or accepted.reason or "invalid")
  return hs
end

if is_true(failed) or status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = failure_message(status, (failed and failed.message) or "Training failed")
  return hs
end

if is_true(succeeded) or status.phase == "Succeeded" then
  if status.evaluation ~= nil and status.evaluation.passed == false then
    hs.status = "Degraded"
    hs.message = "Training succeeded but evaluation gates failed: " .. failed_gates(status.evaluation)
    return hs
  end
  hs.status = "Healthy"
  hs.message = "Training succeeded"
  if status.artifact ~= nil and status.artifact.uri ~= nil then
    hs.message = hs.message .. "; artifact " .. status.artifact.uri
  end
  return hs
end

if spec.suspend == true or is_true(suspended) or status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended; checkpoints are kept and unsuspending resumes"
  return hs
end

if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

hs.status = "Progressing"
hs.message = status.phase or "Pending"
local progress = status.progress
if progress ~= nil and progress.step ~= nil then
  hs.message = hs.message .. ": step " .. tostring(progress.step)
  if progress.totalSteps ~= nil then
    hs.message = hs.message .. "/" .. tostring(progress.totalSteps)
  end
end
return hs
