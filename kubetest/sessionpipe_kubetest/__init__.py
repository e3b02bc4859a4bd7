"""A real Kubernetes control plane for tests, and a pod executor that stands in for the kubelet.

- :mod:`sessionpipe_kubetest.build` compiles etcd, kube-apiserver, kube-controller-manager, kubectl
  and helm from Go modules into a cache outside the repository;
- :mod:`sessionpipe_kubetest.pki` makes the throw-away certificates;
- :mod:`sessionpipe_kubetest.cluster` runs them (:class:`~sessionpipe_kubetest.cluster.ControlPlane`);
- :mod:`sessionpipe_kubetest.executor` runs pods as local processes (the scheduler's and the
  kubelet's job);
- :mod:`sessionpipe_kubetest.waiting` polls for a condition.

``python -m sessionpipe_kubetest {build,up,down}`` builds the binaries, or starts and stops a
control plane that outlives the command. See ``kubetest/README.md`` for what the executor emulates.
"""
