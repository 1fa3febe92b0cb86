"""The vLLM OpenAI server's argv, built from a ModelDeployment's engine settings.

Pure. The result is a list that goes into a container's `args` as it is: no element is ever
joined into a shell string, so a user's `extraArgs` cannot inject anything. Flags that the
operator manages (model, ports, LoRA) are refused in `extraArgs` with the offending index,
because a second `--model` would silently win over ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubetune.api.modeldeployment import Engine

VLLM_PORT = 8000

MANAGED_FLAGS = frozenset(
    {
        "--model",
        "--served-model-name",
        "--host",
        "--port",
        "--enable-lora",
        "--lora-modules",
        "--max-lora-rank",
        "--max-loras",
        "--max-model-len",
        "--tensor-parallel-size",
        "--gpu-memory-utilization",
        "--dtype",
        "--trust-remote-code",
    }
)


@dataclass(frozen=True)
class LoraModule:
    """An adapter served from start-up: `--lora-modules name=path`."""

    name: str
    path: str


class EngineArgsError(ValueError):
    """An engine setting that cannot become a vLLM argument; names the spec field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def check_extra_args(extra_args: Sequence[str] | None) -> None:
    """Refuse extra args that override a flag the operator sets (`--port 1` or `--port=1`)."""
    for index, arg in enumerate(extra_args or ()):
        flag = arg.split("=", 1)[0]
        if flag in MANAGED_FLAGS:
            raise EngineArgsError(
                f"spec.engine.extraArgs[{index}]",
                f"{flag} is set by the operator from the spec; use the matching spec field instead",
            )


def vllm_args(
    *,
    model_path: str,
    served_model_name: str,
    engine: Engine,
    lora_modules: Sequence[LoraModule] = (),
    host: str = "0.0.0.0",
    port: int = VLLM_PORT,
    trust_remote_code: bool = False,
) -> list[str]:
    """argv after the server's entry point. LoRA is always on so adapters can be loaded at runtime."""
    check_extra_args(engine.extra_args)
    args = [
        "--model", model_path,
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        "--enable-lora",
        "--max-lora-rank", str(engine.max_lora_rank),
        "--max-loras", str(engine.max_loras),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--gpu-memory-utilization", repr(float(engine.gpu_memory_utilization)),
        "--dtype", engine.dtype,
    ]  # fmt: skip
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    if lora_modules:
        args.append("--lora-modules")
        args += [f"{module.name}={module.path}" for module in lora_modules]
    if trust_remote_code:
        args.append("--trust-remote-code")
    args += list(engine.extra_args or ())
    return args
