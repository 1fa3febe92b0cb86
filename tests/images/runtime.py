"""Run a built kubetune image the way a container runtime would, with docker, podman or buildah.

`make images` records the tool and the image references in out/images/build.json; these helpers
read it. docker and podman run the image directly (host network, read-only root filesystem, a
tmpfs /tmp, the given UID). buildah has no `run` for images, only for working containers, and
does not apply the image's ENTRYPOINT and CMD: `ImageRuntime` reads them from the image config
and composes the argv exactly as a runtime does (entrypoint + args, or entrypoint + CMD), so an
image without its entrypoint fails here as it would in a pod. With buildah's chroot isolation the
container shares the host's network, like `--network host`; its root filesystem is not mounted
read-only, but the processes run as the pods' non-root UID and cannot write it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_RECORD = Path(os.environ.get("KUBETUNE_IMAGES_RECORD", REPO / "out" / "images" / "build.json"))
REQUIRED = os.environ.get("KUBETUNE_IMAGES_REQUIRED") == "1"
"""`make images-test` sets it: a missing image is then a failure, not a skip."""


def skip_or_fail(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Mount:
    source: Path
    target: str
    read_only: bool = True


@dataclass
class ImageRuntime:
    tool: str
    tool_argv: list[str]
    image: str
    _containers: list[str] = field(default_factory=list)

    @classmethod
    def for_target(cls, target: str) -> ImageRuntime:
        if not BUILD_RECORD.exists():
            skip_or_fail(f"{BUILD_RECORD} is missing: run `make images` first")
        record = json.loads(BUILD_RECORD.read_text())
        info = record.get("images", {}).get(target)
        if not info:
            skip_or_fail(f"image target {target} was not built (`make images IMAGE_TARGETS={target}`)")
        return cls(record["tool"], list(record.get("tool_argv") or [record["tool"]]), info["image"])

    def config(self) -> dict:
        """The image's OCI config (Entrypoint, Cmd, Env, User, WorkingDir)."""
        if self.tool == "buildah":
            out = subprocess.run([*self.tool_argv, "inspect", "--type", "image", self.image],
                                 capture_output=True, text=True, check=True).stdout
            return json.loads(out)["OCIv1"]["config"]
        out = subprocess.run([*self.tool_argv, "image", "inspect", self.image],
                             capture_output=True, text=True, check=True).stdout
        data = json.loads(out)[0]["Config"]
        return {k[0].upper() + k[1:]: v for k, v in data.items()}

    def argv(self, args: list[str] | None = None, *, user: str = "1000:1000", env: dict[str, str] | None = None,
             mounts: list[Mount] = (), command: list[str] | None = None) -> list[str]:
        """The command line that runs the image with Kubernetes' semantics: `command` replaces the
        entrypoint, `args` replace CMD."""
        env = env or {}
        volume_args = [a for m in mounts for a in ("-v", f"{m.source}:{m.target}{':ro' if m.read_only else ''}")]
        if self.tool == "buildah":
            config = self.config()
            entrypoint = command if command is not None else list(config.get("Entrypoint") or [])
            rest = args if args is not None else ([] if command is not None else list(config.get("Cmd") or []))
            full = entrypoint + rest
            if not full:
                raise AssertionError(f"{self.image} has neither an entrypoint nor a command to run")
            container = subprocess.run([*self.tool_argv, "from", "--pull-never", "--quiet", self.image],
                                       capture_output=True, text=True, check=True).stdout.strip()
            self._containers.append(container)
            for key, value in env.items():
                subprocess.run([*self.tool_argv, "config", "--env", f"{key}={value}", container], check=True)
            return [*self.tool_argv, "run", "--isolation", "chroot", "--user", user, *volume_args,
                    container, "--", *full]
        run = [*self.tool_argv, "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
               "--user", user, *volume_args, *[a for k, v in env.items() for a in ("-e", f"{k}={v}")]]
        if command is not None:
            run += ["--entrypoint", command[0]]
            args = [*command[1:], *(args or [])]
        return [*run, self.image, *(args or [])]

    def run(self, args: list[str] | None = None, *, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.argv(args, **kwargs), capture_output=True, text=True, timeout=timeout)
        finally:
            self.cleanup()

    def start(self, args: list[str] | None = None, *, log: Path, **kwargs) -> subprocess.Popen:
        """Run in the background (a new session, so stop() reaches every process it started)."""
        argv = self.argv(args, **kwargs)
        with log.open("w") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, proc: subprocess.Popen, timeout: float = 20) -> int:
        if proc.poll() is None:
            self._terminate(proc)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        self.cleanup()
        return proc.returncode

    def _terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM to the container's first process, as the kubelet sends it. docker and podman
        forward a signal to it; `buildah run` answers one with SIGKILL, so there the first
        process that is not buildah's own is signalled directly."""
        if self.tool != "buildah":
            proc.send_signal(signal.SIGTERM)
            return
        import psutil

        frontier = [psutil.Process(proc.pid)]
        while frontier:
            current = frontier.pop(0)
            try:
                name = " ".join(current.cmdline()[:2])
                children = current.children()
            except psutil.NoSuchProcess:
                continue
            if "buildah" not in name:
                current.send_signal(signal.SIGTERM)
                return
            frontier += children
        proc.send_signal(signal.SIGTERM)

    def cleanup(self) -> None:
        while self._containers:
            subprocess.run([*self.tool_argv, "rm", self._containers.pop()], capture_output=True)
