"""Build the test control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm)
from Go modules into a cache outside the repository.

Nothing here downloads a release binary: every binary is compiled with the machine's Go toolchain
(``GOTOOLCHAIN=local``) from modules served by the Go module proxy. The cache is keyed by version,
so a version bump rebuilds and a warm cache costs nothing. Run ``python -m sessionpipe_kubetest build``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
# The etcd that Kubernetes v1.36.3 pins in its go.mod (go.etcd.io/etcd/server/v3).
ETCD_VERSION = "v3.6.8"
HELM_VERSION = "v3.22.0"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")
ALL_BINARIES = (*KUBE_COMMANDS, "etcd", "helm")


class BuildError(RuntimeError):
    """A build step failed; the message names the missing piece."""


@dataclass(frozen=True)
class Toolset:
    """Where the built binaries of one version set live."""

    bin_dir: Path

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def complete(self) -> bool:
        return all(os.access(self.path(name), os.X_OK) for name in ALL_BINARIES)


def cache_root() -> Path:
    configured = os.environ.get("SESSIONPIPE_CACHE")
    base = Path(configured) if configured else Path.home() / ".cache" / "sessionpipe"
    return base / "controlplane"


def toolset() -> Toolset:
    key = f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_helm-{HELM_VERSION}"
    return Toolset(cache_root() / key / "bin")


def _log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def _go_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS="-mod=mod", GOWORK="off")
    env.setdefault("GOPATH", str(Path.home() / "go"))
    env["GOCACHE"] = env.get("GOCACHE") or str(cache_root() / "gocache")
    # Go refuses a go.mod inside TMPDIR, so temporary files go beside the module folders.
    tmp = cache_root() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp)
    return env


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    _log(f"{what}: {' '.join(cmd)}")
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(cwd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {proc.returncode}) running {' '.join(cmd)}:\n{tail}")
    _log(f"{what}: done in {time.monotonic() - started:.0f}s")
    return proc.stdout


def _require_go() -> None:
    if shutil.which("go") is None:
        raise BuildError("the Go toolchain ('go') is not on PATH; install Go >= 1.26")


def staging_replaces(kubernetes_go_mod: str) -> list[str]:
    """The staging modules that k8s.io/kubernetes replaces with local paths, read from its go.mod."""
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+)\s*=>\s*\./staging/", kubernetes_go_mod, re.M)))


def kube_wrapper_go_mod(kubernetes_go_mod: str) -> str:
    """A go.mod that can build k8s.io/kubernetes commands: every staging module at its published tag."""
    minor = KUBERNETES_VERSION.split(".", 1)[1]  # "36.3"
    godebug = re.search(r"^godebug .*$", kubernetes_go_mod, re.M)
    go_line = re.search(r"^go .*$", kubernetes_go_mod, re.M)
    lines = [
        "module sessionpipe.test/kubebuild",
        "",
        go_line.group(0) if go_line else "go 1.26.0",
        "",
    ]
    if godebug:
        lines += [godebug.group(0), ""]
    lines += [f"require k8s.io/kubernetes {KUBERNETES_VERSION}", "", "replace ("]
    lines += [f"\t{module} => {module} v0.{minor}" for module in staging_replaces(kubernetes_go_mod)]
    lines += [")", "", "tool ("]
    lines += [f"\tk8s.io/kubernetes/cmd/{command}" for command in KUBE_COMMANDS]
    lines += [")", ""]
    return "\n".join(lines)


def _version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={KUBERNETES_VERSION}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
            f"-X {package}.buildDate=1970-01-01T00:00:00Z",
        ]
    return "-s -w " + " ".join(flags)


def _download_go_mod(module: str, version: str, work: Path) -> str:
    import json

    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], work, f"fetch {module} go.mod")
    info = json.loads(out)
    if info.get("Error"):
        raise BuildError(f"the Go module proxy could not serve {module}@{version}: {info['Error']}")
    return Path(info["GoMod"]).read_text()


def _build_kubernetes(tools: Toolset, work: Path) -> None:
    if all(os.access(tools.path(name), os.X_OK) for name in KUBE_COMMANDS):
        return
    module_dir = work / "kubernetes"
    module_dir.mkdir(parents=True, exist_ok=True)
    upstream = _download_go_mod("k8s.io/kubernetes", KUBERNETES_VERSION, module_dir)
    (module_dir / "go.mod").write_text(kube_wrapper_go_mod(upstream))
    _run(["go", "mod", "tidy"], module_dir, "resolve Kubernetes modules")
    _run(
        [
            "go",
            "build",
            "-trimpath",
            "-ldflags",
            _version_ldflags(),
            "-o",
            str(tools.bin_dir) + "/",
            *[f"k8s.io/kubernetes/cmd/{command}" for command in KUBE_COMMANDS],
        ],
        module_dir,
        f"build {', '.join(KUBE_COMMANDS)} {KUBERNETES_VERSION}",
    )


def _build_etcd(tools: Toolset, work: Path) -> None:
    if os.access(tools.path("etcd"), os.X_OK):
        return
    module_dir = work / "etcd"
    module_dir.mkdir(parents=True, exist_ok=True)
    (module_dir / "go.mod").write_text("module sessionpipe.test/etcdbuild\n\ngo 1.26.0\n")
    _run(["go", "get", "-tool", f"go.etcd.io/etcd/server/v3@{ETCD_VERSION}"], module_dir, "resolve etcd")
    _run(
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tools.path("etcd")), "go.etcd.io/etcd/server/v3"],
        module_dir,
        f"build etcd {ETCD_VERSION}",
    )


def _build_helm(tools: Toolset, work: Path) -> None:
    if os.access(tools.path("helm"), os.X_OK):
        return
    module_dir = work / "helm"
    module_dir.mkdir(parents=True, exist_ok=True)
    (module_dir / "go.mod").write_text("module sessionpipe.test/helmbuild\n\ngo 1.26.0\n")
    _run(["go", "get", "-tool", f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"], module_dir, "resolve helm")
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    ldflags = (
        f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
        f" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={major}"
        f" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor}"
    )
    _run(
        ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(tools.path("helm")), "helm.sh/helm/v3/cmd/helm"],
        module_dir,
        f"build helm {HELM_VERSION}",
    )


def ensure_built() -> Toolset:
    """Build whatever of the pinned tool set is missing; return where it lives. Idempotent."""
    tools = toolset()
    if tools.complete:
        return tools
    _require_go()
    tools.bin_dir.mkdir(parents=True, exist_ok=True)
    work = tools.bin_dir.parent / "build"
    work.mkdir(parents=True, exist_ok=True)
    _log(f"building the control plane into {tools.bin_dir} (a cold build takes a while on two cores)")
    _build_etcd(tools, work)
    _build_helm(tools, work)
    _build_kubernetes(tools, work)
    missing = [name for name in ALL_BINARIES if not os.access(tools.path(name), os.X_OK)]
    if missing:
        raise BuildError(f"after the build these binaries are still missing: {', '.join(missing)}")
    return tools


def main() -> int:
    try:
        tools = ensure_built()
    except BuildError as error:
        print(f"control-plane build failed: {error}", file=sys.stderr)
        return 1
    print(tools.bin_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
