#!/usr/bin/env python3
"""Build, list and measure kubetune's images with docker, podman or buildah (`make images`).

    scripts/images.py list                       # target and reference of every image
    scripts/images.py build [--targets T ...]    # build them; writes out/images/build.json
    scripts/images.py sizes                      # compressed size of each built image

Names come from kubetune/common/images.py (loaded by path: this runs before kubetune is
installed, with the standard library only). The tag is the package version, which equals the
chart's appVersion (tests/images/test_naming.py checks both).

On a build host whose pip reaches its package index only through local configuration (a CA
bundle, find-links folders, file:// indexes), `--host-pip auto` (the default) mounts that
configuration read-only into buildah and podman builds at the same paths: the effective settings
of `pip config list` as /etc/pip.conf, and every local path they name. Nothing of it is kept in
the images. docker build cannot mount folders, so there it is skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "out" / "images"
TOOLS = ("docker", "podman", "buildah")


def load_scheme():
    spec = importlib.util.spec_from_file_location("kubetune_images", ROOT / "kubetune" / "common" / "images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def detect_tool(requested: str) -> str:
    """The container tool to use: docker only with a reachable daemon, else podman, else buildah."""
    if requested != "auto":
        if not shutil.which(requested):
            raise SystemExit(f"images: {requested} is not installed")
        return requested
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    for tool in ("podman", "buildah"):
        if shutil.which(tool):
            return tool
    raise SystemExit("images: none of docker (with a running daemon), podman or buildah is installed; "
                     "on Debian: apt-get install buildah")


def pip_settings(python: str = sys.executable) -> dict[str, dict[str, str]]:
    """pip's effective configuration on this host, by section (environment variables win)."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    files: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        value = raw.strip().strip("'\"")
        section, _, name = key.rpartition(".")
        if section == ":env:":
            env[name] = value
        elif section:
            files.setdefault(section, {})[name] = value
    if env:
        files.setdefault("global", {}).update(env)
    return files


PATH_KEYS = ("cert", "client-cert", "find-links", "index-url", "extra-index-url", "constraint")


def local_paths(settings: dict[str, dict[str, str]]) -> list[str]:
    """Local files and folders the pip settings name (file:// URLs included)."""
    paths: set[str] = set()
    for section in settings.values():
        for key in PATH_KEYS:
            for item in section.get(key, "").split():
                path = urlparse(item).path if item.startswith("file://") else item
                if key.endswith("index-url") and path.startswith("/"):
                    # A local simple index links its files relative to itself (../files/...).
                    path = os.path.dirname(path.rstrip("/"))
                if path.startswith("/") and os.path.exists(path):
                    paths.add(path)
    cert_dir = os.environ.get("SSL_CERT_DIR") or "/etc/ssl/certs"
    if os.path.isdir(cert_dir):
        paths.add(cert_dir)
    # A folder already mounted covers the files inside it.
    return sorted(p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths))


def host_pip_mounts(workdir: Path) -> list[str]:
    """`-v SRC:DST:ro` arguments carrying this host's pip configuration into a build."""
    settings = pip_settings()
    if not settings:
        return []
    conf = workdir / "pip.conf"
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
    conf.write_text("\n".join(lines) + "\n")
    mounts = [f"{conf}:/etc/pip.conf:ro"]
    for path in local_paths(settings):
        mounts.append(f"{path}:{path}:ro")
    return [arg for mount in mounts for arg in ("-v", mount)]


def tool_argv(tool: str) -> list[str]:
    """The tool with its global options. For buildah and podman: the storage driver from
    STORAGE_DRIVER (vfs where the kernel offers no overlay mounts) and, from
    KUBETUNE_IMAGE_STORAGE_ROOT, a storage folder of its own (CI builds from nothing there)."""
    argv = [tool]
    if tool not in ("podman", "buildah"):
        return argv
    if os.environ.get("STORAGE_DRIVER"):
        argv += ["--storage-driver", os.environ["STORAGE_DRIVER"]]
    if os.environ.get("KUBETUNE_IMAGE_STORAGE_ROOT"):
        root = os.path.abspath(os.environ["KUBETUNE_IMAGE_STORAGE_ROOT"])
        argv += ["--root", root, "--runroot", os.path.join(root, "run")]
    return argv


def build_command(tool: str, target: str, ref: str, *, base_image: str | None, torch_index_url: str | None,
                  mounts: list[str]) -> list[str]:
    argv = [*tool_argv(tool), "build", "-f", str(ROOT / "Dockerfile"), "--target", target, "-t", ref]
    if tool in ("podman", "buildah"):
        argv += ["--layers"] + mounts  # --layers: later targets reuse the shared stages
    if base_image:
        argv += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if torch_index_url is not None:
        argv += ["--build-arg", f"TORCH_INDEX_URL={torch_index_url}"]
    return argv + [str(ROOT)]


def cmd_list(args: argparse.Namespace) -> int:
    scheme = load_scheme()
    version = args.version or project_version()
    for item in scheme.TARGETS:
        ref = scheme.target_ref(item, version, registry=args.registry, prefix=args.prefix)
        print(json.dumps({"target": item.target, "image": ref, "platforms": list(item.platforms)})
              if args.json else f"{item.target}\t{ref}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    scheme = load_scheme()
    version = project_version()
    tool = detect_tool(args.tool)
    known = [t.target for t in scheme.TARGETS]
    targets = args.targets or known
    unknown = sorted(set(targets) - set(known))
    if unknown:
        raise SystemExit(f"images: unknown target(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "build.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if record.get("tool") not in (None, tool):
        record = {}
    record.update({"tool": tool, "tool_argv": tool_argv(tool), "version": version})
    images = record.setdefault("images", {})
    with tempfile.TemporaryDirectory(prefix="kubetune-images-") as tmp:
        mounts: list[str] = []
        if args.host_pip != "off" and tool in ("podman", "buildah"):
            mounts = host_pip_mounts(Path(tmp))
        elif args.host_pip == "on":
            print(f"images: {tool} build cannot mount pip's configuration; building without it", file=sys.stderr)
        for name in targets:
            item = scheme.target(name)
            ref = scheme.target_ref(item, version, registry=args.registry, prefix=args.prefix)
            argv = build_command(tool, name, ref, base_image=args.base_image,
                                 torch_index_url=args.torch_index_url, mounts=mounts)
            print(f"images: building {ref} (target {name}) with {tool}", flush=True)
            print("  " + shlex.join(argv), flush=True)
            log = out / f"{name}.log"
            start = time.monotonic()
            with open(log, "w") as log_file:
                proc = subprocess.run(argv, stdout=None if args.verbose else log_file,
                                      stderr=None if args.verbose else subprocess.STDOUT)
            seconds = round(time.monotonic() - start, 1)
            if proc.returncode != 0:
                tail = "" if args.verbose else "".join(log.read_text(errors="replace").splitlines(True)[-40:])
                print(f"{tail}images: building {ref} failed after {seconds} s (exit {proc.returncode}); "
                      f"the build log is {log}", file=sys.stderr)
                return proc.returncode
            images[name] = {"image": ref, "build_seconds": seconds, "base_image": args.base_image or "python:3.11-slim"}
            tmp_record = record_path.with_suffix(".json.tmp")
            tmp_record.write_text(json.dumps(record, indent=2) + "\n")
            tmp_record.replace(record_path)
            print(f"images: built {ref} in {seconds} s", flush=True)
    return 0


def compressed_size(tool: str, ref: str) -> int:
    """Bytes of the image's layers and config as a registry stores them (gzip)."""
    with tempfile.TemporaryDirectory(prefix="kubetune-size-") as tmp:
        if tool == "docker":
            save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
            gz = subprocess.run(["gzip", "-c"], stdin=save.stdout, capture_output=True, check=True)
            save.wait()
            return len(gz.stdout)
        dest = Path(tmp) / "oci"
        subprocess.run([*tool_argv(tool), "push", "--quiet", "--compression-format", "gzip", ref, f"oci:{dest}"],
                       check=True, stdout=subprocess.DEVNULL)
        return sum(f.stat().st_size for f in (dest / "blobs").rglob("*") if f.is_file())


def cmd_sizes(args: argparse.Namespace) -> int:
    record_path = Path(args.out) / "build.json"
    if not record_path.exists():
        raise SystemExit(f"images: {record_path} is missing: run `make images` first")
    record = json.loads(record_path.read_text())
    for name, info in record["images"].items():
        info["compressed_bytes"] = compressed_size(record["tool"], info["image"])
        print(f"{info['image']}\t{info['compressed_bytes'] / 1e6:.0f} MB compressed\tbuilt in {info['build_seconds']} s")
    tmp_record = record_path.with_suffix(".json.tmp")
    tmp_record.write_text(json.dumps(record, indent=2) + "\n")
    tmp_record.replace(record_path)
    return 0


def cmd_base(args: argparse.Namespace) -> int:
    tool = tool_argv(args.tool)
    if args.tool == "docker":
        subprocess.run(["docker", "import", args.tarball, args.tag], check=True)
    else:
        container = subprocess.run([*tool, "from", "scratch"], capture_output=True, text=True, check=True).stdout.strip()
        try:
            subprocess.run([*tool, "add", container, args.tarball, "/"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run([*tool, "commit", "--quiet", container, args.tag], check=True, stdout=subprocess.DEVNULL)
        finally:
            subprocess.run([*tool, "rm", container], capture_output=True)
    print(f"images: base image {args.tag} from {args.tarball}")
    return 0


def main(argv: list[str] | None = None) -> int:
    scheme = load_scheme()
    parser = argparse.ArgumentParser(prog="scripts/images.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", default=os.environ.get("KUBETUNE_IMAGE_REGISTRY", scheme.REGISTRY))
    parser.add_argument("--prefix", default=os.environ.get("KUBETUNE_IMAGE_PREFIX", scheme.PREFIX))
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where build.json is kept")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="the image of every target")
    p_list.add_argument("--version", help="release version (default: pyproject's)")
    p_list.add_argument("--json", action="store_true", help="one JSON object per line")
    p_build = sub.add_parser("build", help="build images")
    p_build.add_argument("--tool", choices=("auto", *TOOLS), default=os.environ.get("IMAGE_TOOL", "auto"))
    p_build.add_argument("--targets", nargs="*", help="Dockerfile targets (default: all)")
    p_build.add_argument("--base-image", help="BASE_IMAGE build argument (default python:3.11-slim)")
    p_build.add_argument("--torch-index-url", help="TORCH_INDEX_URL build argument of trainer-cpu "
                         "('' uses pip's configured sources)")
    p_build.add_argument("--host-pip", choices=("auto", "on", "off"), default="auto")
    p_build.add_argument("--verbose", action="store_true", help="show the build log")
    sub.add_parser("sizes", help="compressed size of each built image (recorded in build.json)")
    p_base = sub.add_parser("base", help="import a root filesystem tarball as a base image (for BASE_IMAGE)")
    p_base.add_argument("tarball", help="e.g. made by: mmdebstrap --variant=apt "
                        "--include=python3,python3-venv,ca-certificates bookworm base.tar")
    p_base.add_argument("--tag", default="localhost/kubetune-base:bookworm")
    p_base.add_argument("--tool", choices=("buildah", "podman", "docker"), default="buildah")
    args = parser.parse_args(argv)
    return {"list": cmd_list, "build": cmd_build, "sizes": cmd_sizes, "base": cmd_base}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
