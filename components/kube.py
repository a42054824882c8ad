"""The Kubernetes API client the cluster steps use: in a pod, its service account;
elsewhere, the kubeconfig."""
from __future__ import annotations


def api_client():
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    return k8s.ApiClient()
