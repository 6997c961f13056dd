"""The Kubernetes manifests (deploy/k8s): every overlay renders with `kubectl kustomize`, every object validates
against the Kubernetes schemas offline (kubernetes-validate's bundled ones, strict: no unknown fields), and the parts
that must agree do: Services and Deployments, probes and the health port, the Job's shard count, the Secrets,
ConfigMaps and volumes they name, and the flags the image's entry points pass to zsc's own CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu-tiny", "gpu-paper")
# the oldest release the manifests use everything of (Job backoffLimitPerIndex went GA in 1.33)
KUBERNETES_VERSION = "1.33.0"
IMAGE = "zsc:0.1.0"
PORTS = {"synthesis": 50051, "recovery": 50052, "generative": 50053, "classification": 50054}
HEALTH_PORT = 8086


def _kubectl() -> str:
    """kubectl with kustomize v4 or newer (the overlays use `labels` and targeted `patches`)."""
    path = shutil.which("kubectl")
    version = ""
    if path is not None:
        out = subprocess.run([path, "version", "--client"], capture_output=True, text=True, timeout=30, check=False)
        version = (re.findall(r"Kustomize Version: v(\d+)", out.stdout) or ["0"])[0]
    if path is None or int(version) < 4:
        why = "kubectl is missing" if path is None else f"kubectl's kustomize is v{version}, these need v4+"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (.ci/run installs kubectl)")
        pytest.skip(why)
    return path


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / "overlays" / request.param)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return request.param, [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def test_every_object_validates_against_the_kubernetes_schemas(rendered) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, objects = rendered
    for obj in objects:
        # raises ValidationError (unknown field, wrong type, missing required field) naming the object
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["Namespace", "ConfigMap", "ConfigMap", "PersistentVolumeClaim", "PersistentVolumeClaim", "Job"]
        + ["Deployment", "Service"] * 4
    )
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"zsc"}


def test_a_bad_object_fails_validation() -> None:
    """The check can fail: a misspelt probe field is caught."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": IMAGE, "readinessProbe": {"grpc": {"prot": 8086}}}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_each_service_has_a_headless_service_and_native_grpc_probes(rendered) -> None:
    overlay, objects = rendered
    deployments, services = _of(objects, "Deployment"), _of(objects, "Service")
    assert set(deployments) == set(services) == {f"zsc-{name}" for name in PORTS}
    for name, port in PORTS.items():
        deployment, service = deployments[f"zsc-{name}"], services[f"zsc-{name}"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["clusterIP"] == "None"  # headless: DNS lists every ready pod
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        (container,) = _pod(deployment)["containers"]
        assert container["image"] == IMAGE
        assert container["command"] == ["zsc-serve"]
        assert container["args"] == [name, "--port", str(port)]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": port, "health": HEALTH_PORT}
        assert [p["port"] for p in service["spec"]["ports"]] == [port]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["ZSC_HEALTH_PORT"] == str(HEALTH_PORT)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": HEALTH_PORT}, (overlay, name, probe)
        gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        assert gpus == (1 if overlay == "gpu-paper" else None)
        assert container["resources"]["requests"]["memory"]
    replicas = {n: d["spec"]["replicas"] for n, d in deployments.items()}
    if overlay == "gpu-paper":
        assert replicas == {"zsc-synthesis": 4, "zsc-classification": 2, "zsc-recovery": 1, "zsc-generative": 1}
    else:
        assert set(replicas.values()) == {1}


def test_references_resolve_and_settings_come_from_configmaps_and_secrets(rendered) -> None:
    overlay, objects = rendered
    configmaps = _of(objects, "ConfigMap")
    claims = set(_of(objects, "PersistentVolumeClaim"))
    settings = next(c for n, c in configmaps.items() if n.startswith("zsc-settings-"))
    assert settings["data"]["ZSC_PROFILE"] == ("paper" if overlay == "gpu-paper" else "tiny")
    assert settings["data"]["MLFLOW_TRACKING_URI"].startswith("http")
    assert "['remote \"team\"']" in settings["data"]["dvc-config"]
    for obj in [*_of(objects, "Deployment").values(), *_of(objects, "Job").values()]:
        pod = _pod(obj)
        volumes = {v["name"]: v for v in pod["volumes"]}
        secrets = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
        assert "zsc-tls" in secrets
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
        for container in pod["containers"]:
            assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
            for source in container["envFrom"]:
                assert source["configMapRef"]["name"] in configmaps
        if obj["kind"] == "Deployment":
            assert "zsc-auth" in secrets  # the server reads its token file from the Secret


def _job_env(job: dict[str, Any], configmaps: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    (container,) = _pod(job)["containers"]
    env: dict[str, str | None] = {}
    for source in container["envFrom"]:
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e.get("value") for e in container["env"]})
    return env


def test_the_indexed_job_runs_n_shards_that_zsc_accepts(rendered) -> None:
    from zsc.cli.main import build_parser

    overlay, objects = rendered
    (job,) = _of(objects, "Job").values()
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    (container,) = _pod(job)["containers"]
    env = _job_env(job, _of(objects, "ConfigMap"))
    assert int(env["ZSC_SHARDS"]) == spec["completions"] == {"cpu-tiny": 2, "gpu-paper": 16}[overlay]
    assert spec["parallelism"] <= spec["completions"]
    assert env["ZSC_SYNTHESIS_ADDRESS"] == "zsc-synthesis:50051"  # the headless Service
    index = next(e for e in container["env"] if e["name"] == "ZSC_SHARD_INDEX")
    assert "job-completion-index" in index["valueFrom"]["fieldRef"]["fieldPath"]
    env["ZSC_SHARD_INDEX"] = str(spec["completions"] - 1)  # what the kubelet fills in for the last pod
    args = container["args"]
    for arg in args:
        for var in re.findall(r"\$\((\w+)\)", arg):
            assert env.get(var) is not None, f"$({var}) is not set in the Job's pod"
    # the kubelet's $(VAR) expansion, then zsc's own parser: the command the last pod runs is a valid one
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: str(env[m.group(1)]), a) for a in container["command"][1:] + args]
    parsed = build_parser().parse_args(expanded)
    assert parsed.shard == (spec["completions"] - 1, spec["completions"])
    assert parsed.classes == "@/etc/zsc/job/classes.txt"
    assert any(m["mountPath"] == "/etc/zsc/job" for m in container["volumeMounts"])
    # the class folders of the real test set, as the mazsc pipeline names them
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert (K8S / "base" / "classes.txt").read_text().split() == params["synthesize"]["classes"].split(",")


def test_the_image_entry_point_passes_flags_zsc_serve_accepts(tmp_path: Path) -> None:
    """deploy/zsc-serve with a stand-in `zsc` that prints its argv: the flags parse with `zsc serve`'s parser and
    point at the paths the manifests mount."""
    from zsc.cli.main import build_parser

    fake = tmp_path / "zsc"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "ZSC_PROFILE": "paper", "ZSC_HEALTH_PORT": str(HEALTH_PORT)}
    out = subprocess.run(
        [str(REPO / "deploy" / "zsc-serve"), "classification", "--port", "50054"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    argv = out.stdout.splitlines()
    parsed = build_parser().parse_args(argv)
    assert (parsed.service, parsed.port, parsed.health_port, parsed.profile) == (
        "classification",
        50054,
        HEALTH_PORT,
        "paper",
    )
    assert parsed.host == "0.0.0.0"
    assert [str(p) for p in parsed.data_root] == ["/data"]
    assert str(parsed.auth_token_file) == "/etc/zsc/auth/token"
    assert (str(parsed.tls_cert), str(parsed.tls_key)) == ("/etc/zsc/tls/tls.crt", "/etc/zsc/tls/tls.key")


def test_the_dockerfile_builds_the_image_the_manifests_name() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"-t {IMAGE}" in dockerfile
    assert "deploy/zsc-serve /usr/local/bin/zsc-serve" in dockerfile
    ignored = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert "!deploy/zsc-serve" in ignored and "!shared" in ignored and "!services" in ignored
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert f"{image['name']}:{image['newTag']}" == IMAGE
