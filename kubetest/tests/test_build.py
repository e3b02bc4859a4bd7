"""The Kubernetes wrapper module: every staging module replaced by its published version."""

from __future__ import annotations

from sessionpipe_kubetest.build import KUBE_COMMANDS, KUBERNETES_VERSION, kube_wrapper_go_mod, staging_replaces

KUBERNETES_GO_MOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tk8s.io/api v0.0.0
\tgithub.com/spf13/cobra v1.9.1
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/api => ./staging/src/k8s.io/api
\tgithub.com/example/fork => github.com/example/fork v1.0.0
\tk8s.io/klog/v2 => k8s.io/klog/v2 v2.130.1
)
"""


def test_only_staging_replaces_are_read_each_once() -> None:
    assert staging_replaces(KUBERNETES_GO_MOD) == ["k8s.io/api", "k8s.io/client-go"]


def test_the_wrapper_pins_staging_modules_to_the_release_and_keeps_go_and_godebug() -> None:
    minor = KUBERNETES_VERSION.split(".", 1)[1]
    wrapper = kube_wrapper_go_mod(KUBERNETES_GO_MOD).splitlines()
    assert "go 1.26.0" in wrapper
    assert "godebug default=go1.26" in wrapper
    assert f"require k8s.io/kubernetes {KUBERNETES_VERSION}" in wrapper
    assert f"\tk8s.io/api => k8s.io/api v0.{minor}" in wrapper
    assert f"\tk8s.io/client-go => k8s.io/client-go v0.{minor}" in wrapper
    assert not any("example/fork" in line or "klog" in line for line in wrapper)
    assert [line.strip() for line in wrapper if line.startswith("\tk8s.io/kubernetes/cmd/")] == [
        f"k8s.io/kubernetes/cmd/{command}" for command in KUBE_COMMANDS
    ]
