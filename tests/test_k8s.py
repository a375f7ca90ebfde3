"""A bundle's Kubernetes manifests (`bundle(..., k8s=True)`, `aimass bundle REF DIR --k8s`): valid against the Kubernetes
schemas (kubernetes-validate, offline) and KServe's InferenceService schema, consistent with the bundle they run, and
bad settings refused in one line before anything is written."""
import copy, dataclasses, json, re, subprocess, sys
from pathlib import Path
import pytest

yaml = pytest.importorskip("yaml")
kv = pytest.importorskip("kubernetes_validate")
import jsonschema

from aimass.core import AimassError
from aimass import deployment as B
from conftest import ROOT
from test_bundle import home, tmpdirs, BundleServer  # the session's churn model (bundled once), and the bundle server runner

KSERVE_SCHEMA = json.loads((Path(__file__).parent/"kserve_inferenceservice.schema.json").read_text())
K8S_VERSIONS = ("1.27", kv.latest_version())  # autoscaling/v2 is GA from 1.23; the oldest and newest schemas checked
MANIFESTS = ("k8s/deployment.yaml", "k8s/service.yaml", "k8s/hpa.yaml", "k8s/kserve/inferenceservice.yaml")


@pytest.fixture(scope="module")
def kube(home):
    "A bundle of churn:v1 with Kubernetes manifests: 2 replicas, up to 5, 2 inference processes per pod."
    b = B.bundle("churn:v1", home["dir"]/"bundles"/"churn-k8s", k8s=True, replicas=2, max_replicas=5, workers=2, check=False)
    docs = {f: list(yaml.safe_load_all((b.path/f).read_text())) for f in MANIFESTS}
    return b, docs


def _one(docs, f): return docs[f][0]
def _container(pod_spec): return pod_spec["containers"][0]


def _undeclared(doc, schema, path=""):
    "Keys of `doc` that `schema` (a CRD's OpenAPI schema) does not declare: the API server would drop them without a word."
    if isinstance(doc, dict) and "properties" in schema:
        return [p for k, v in doc.items()
                for p in ([f"{path}.{k}"] if k not in schema["properties"] else _undeclared(v, schema["properties"][k], f"{path}.{k}"))]
    if isinstance(doc, list) and "items" in schema: return [p for i, v in enumerate(doc) for p in _undeclared(v, schema["items"], f"{path}[{i}]")]
    return []


def _kserve_problems(isvc) -> list:
    return [e.message for e in jsonschema.Draft202012Validator(KSERVE_SCHEMA).iter_errors(isvc)] + \
           [f"{p} is not in KServe's schema" for p in _undeclared(isvc, KSERVE_SCHEMA)]


def test_files_and_manifest(kube, home):
    b, docs = kube
    k8s = sorted(f for f in b.files if f.startswith("k8s/"))
    assert k8s == ["k8s/api-key-secret.yaml.template", *sorted(MANIFESTS)]
    assert [d["kind"] for f in MANIFESTS for d in docs[f]] == ["Deployment", "Service", "HorizontalPodAutoscaler", "InferenceService"]
    assert b.manifest["k8s"] == {"replicas": 2, "max_replicas": 5, "cpu_target": 70, "cpu": None, "memory": None,
                                 "cpu_limit": None, "memory_limit": None}
    assert b.manifest["image"] == "churn:v1" and b.verify()  # the manifests are in bundle.json's sha256 list
    assert not any(f.startswith("k8s/") for f in home["bundle"].files) and home["bundle"].manifest["k8s"] is None  # only with k8s


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(kube, version):
    "Deployment, Service, HPA and the Secret template validate (strict: no field the API does not have) against Kubernetes' own schemas."
    b, docs = kube
    secret = yaml.safe_load((b.path/"k8s"/"api-key-secret.yaml.template").read_text())
    for doc in [*(d for f in MANIFESTS[:3] for d in docs[f]), secret]:
        kv.validate(doc, version, strict=True)
    broken = copy.deepcopy(_one(docs, "k8s/deployment.yaml"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError): kv.validate(broken, version, strict=True)  # the validator does check


def test_inferenceservice_validates_against_kserves_crd_schema(kube):
    "The InferenceService against KServe's own CRD schema (vendored from kserve/kserve, see its $comment), every field declared."
    isvc = _one(kube[1], "k8s/kserve/inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert _kserve_problems(isvc) == []
    typo = copy.deepcopy(isvc); typo["spec"]["predictor"]["minReplica"] = 2
    wrong = copy.deepcopy(isvc); wrong["spec"]["predictor"]["scaleMetric"] = "gpu"
    nameless = copy.deepcopy(isvc); del nameless["spec"]["predictor"]["containers"][0]["name"]
    assert _kserve_problems(typo) == [".spec.predictor.minReplica is not in KServe's schema"]
    assert any("'gpu' is not one of" in p for p in _kserve_problems(wrong))
    assert any("'name' is a required property" in p for p in _kserve_problems(nameless))
    kv.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": isvc["metadata"]}, K8S_VERSIONS[-1], strict=True)  # its ObjectMeta


def test_manifests_run_the_bundle(kube):
    "Image, command, port, probes and Secret agree across the Deployment, the InferenceService, the Dockerfile and bundle.json."
    b, docs = kube
    dep, svc, hpa, isvc = (_one(docs, f) for f in MANIFESTS)
    port = b.manifest["server"]["port"]
    assert f"EXPOSE {port}" in (b.path/"Dockerfile").read_text()
    pod = dep["spec"]["template"]
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items() and svc["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"][0]["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    pred = isvc["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"], pred["scaleMetric"], pred["scaleTarget"]) == (2, 5, "cpu", 70)
    for c, port_name in ((_container(pod["spec"]), "http"), (_container(pred), "http1")):
        assert c["image"] == "churn:v1" and c["command"] == ["python", "server.py"]
        assert c["args"] == ["--host", "0.0.0.0", "--port", str(port)]
        assert c["ports"] == [{"name": port_name, "containerPort": port, "protocol": "TCP"}]
        assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
        assert c["env"] == [{"name": "AIMASS_API_KEY", "valueFrom": {"secretKeyRef": {"name": "churn-api-key", "key": "api-key"}}}]
        assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["allowPrivilegeEscalation"] is False
    assert _container(pred)["name"] == "kserve-container"  # KServe's name for a custom predictor's container
    from aimass.bundle_server import bundle_config, server_parser
    manifest, defaults = bundle_config(b.path)
    flags = vars(server_parser(manifest, defaults).parse_args(_container(pod["spec"])["args"]))  # server.py takes the args as they are
    cfg = dataclasses.replace(defaults, **flags)
    assert (cfg.host, cfg.port, cfg.workers) == ("0.0.0.0", port, 2)  # the rest from bundle.json
    assert _container(pod["spec"])["resources"] == _container(pred)["resources"]
    for f in ("k8s/deployment.yaml", "k8s/kserve/inferenceservice.yaml"):  # the comment says why 0.0.0.0 is fine in there
        comment = re.search(r"((?:\n *#[^\n]*)+)\n *args:", (b.path/f).read_text())[1]
        assert "--host 0.0.0.0" in comment and "the container is" in comment and "the boundary" in comment, comment


def test_the_secret_is_only_a_template(kube):
    "No key is ever written: the template holds a placeholder, and `kubectl apply -f k8s/` skips it (not .yaml/.yml/.json)."
    b, _ = kube
    template = b.path/"k8s"/"api-key-secret.yaml.template"
    assert template.suffix not in (".yaml", ".yml", ".json")
    secret = yaml.safe_load(template.read_text())
    assert secret["metadata"]["name"] == "churn-api-key" and secret["stringData"] == {"api-key": "REPLACE-WITH-A-LONG-RANDOM-KEY"}
    assert "kubectl create secret generic churn-api-key --from-literal=api-key=" in template.read_text()


def test_resources_derived_and_overridden(home, tmp_path):
    "Requests follow the server's processes and the ONNX file's size; flags override any of them; limits default to twice the requests."
    b = B.bundle("churn:v1", tmp_path/"a", k8s=True, workers=3, threads=2, api_servers=2, check=False)
    res = _container(yaml.safe_load((b.path/"k8s"/"deployment.yaml").read_text())["spec"]["template"]["spec"])["resources"]
    onnx_mb = (b.path/b.manifest["onnx"]["file"]).stat().st_size / 2**20
    assert res["requests"]["cpu"] == "6500m" and res["limits"]["cpu"] == "13000m"  # 3 x 2 cores + 2 HTTP processes x 250m
    memory = int(res["requests"]["memory"].removesuffix("Mi"))
    assert memory % 64 == 0 and 200 + 2 * 40 + 16 + 3 * 2 * onnx_mb <= memory < 200 + 2 * 40 + 16 + 3 * 2 * onnx_mb + 64 + 1
    assert res["limits"]["memory"] == f"{2 * memory}Mi"
    b = B.bundle("churn:v1", tmp_path/"b", k8s=True, cpu="500m", memory="1Gi", cpu_limit="2", memory_limit="3Gi", check=False)
    res = _container(yaml.safe_load((b.path/"k8s"/"deployment.yaml").read_text())["spec"]["template"]["spec"])["resources"]
    assert res == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "3Gi"}}
    kv.validate(yaml.safe_load((b.path/"k8s"/"deployment.yaml").read_text()), K8S_VERSIONS[-1], strict=True)


def test_image_option(home, tmp_path):
    b = B.bundle("churn:v1", tmp_path/"svc", k8s=True, image="registry.example.com:5000/team/churn:2024-06", check=False)
    for f in ("k8s/deployment.yaml", "k8s/kserve/inferenceservice.yaml"):
        assert "image: registry.example.com:5000/team/churn:2024-06\n" in (b.path/f).read_text()
    assert "docker build -t registry.example.com:5000/team/churn:2024-06 ." in b.readme and b.manifest["image"].endswith(":2024-06")


@pytest.mark.parametrize("settings, error", [
    (dict(k8s=True, replicas=0), "replicas must be a whole number of at least 1, not 0."),
    (dict(k8s=True, replicas=3, max_replicas=2), "max_replicas must be a whole number of at least replicas (3), not 2."),
    (dict(k8s=True, memory="-512Mi"), "memory must be a Kubernetes quantity above 0, such as 512Mi or 2Gi; got '-512Mi'."),
    (dict(k8s=True, cpu_limit="-1"), "cpu_limit must be a Kubernetes quantity above 0, such as 500m or 2; got '-1'."),
    (dict(k8s=True, cpu="2", cpu_limit="1"), "cpu_limit (1) is below the cpu request (2): a pod could never get what it asks for."),
    (dict(k8s=True, cpu_target=0), "cpu_target must be a whole number of at least 1, not 0."),
    (dict(replicas=3), "replicas only apply to the Kubernetes manifests: add k8s=True (--k8s), or leave them out."),
    (dict(k8s=True, image="My Model:v1"), "image must be a Docker image name"),
])
def test_bad_settings_are_one_line_errors_that_write_nothing(home, tmp_path, settings, error):
    with pytest.raises(AimassError) as e: B.bundle("churn:v1", tmp_path/"svc", **settings)
    assert str(e.value).startswith(error) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_writing_leaves_nothing_half_written(home, tmp_path, monkeypatch):
    "A failure in the middle of writing k8s/ leaves no folder (or the earlier bundle, whole), and no staging folder."
    def fail(*a, **k): raise OSError(28, "No space left on device")
    monkeypatch.setattr(B, "_write_k8s", fail)
    with pytest.raises(OSError, match="No space left"): B.bundle("churn:v1", tmp_path/"svc", k8s=True, check=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    first = B.bundle("churn:v1", tmp_path/"svc", check=False)
    monkeypatch.setattr(B, "_write_k8s", fail)
    with pytest.raises(OSError): B.bundle("churn:v1", tmp_path/"svc", k8s=True, overwrite=True, check=False)
    assert [p.name for p in tmp_path.iterdir()] == ["svc"] and B.open_bundle(first.path).verify().manifest["k8s"] is None


def test_readme_runs_it_on_kubernetes(kube, home):
    b, _ = kube
    part = b.readme.split("## Run on Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    for what in ("kubectl apply -f k8s/", 'kubectl create secret generic churn-api-key --from-literal=api-key="$(openssl rand -hex 32)"',
                 "docker build -t churn:v1 . && docker push churn:v1", "kubectl get hpa churn --watch", "2 to 5 pods",
                 "kubectl apply -f k8s/kserve/", "/v2/health/ready"):
        assert what in part, what
    assert "## Run on Kubernetes" not in home["bundle"].readme  # only in bundles made with k8s


def test_flags_in_magic_help(ip, capsys):
    ip.run_line_magic("aimass", "bundle --help")
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--k8s", "--replicas REPLICAS", "--max-replicas", "--cpu-target", "--cpu CPU", "--memory MEMORY", "--cpu-limit",
                 "--memory-limit", "--image IMAGE"):
        assert flag in out, flag
    assert "the autoscaler's most pods" in out


def test_cli_writes_manifests(home, tmp_path, capsys):
    "The console script's parser and `bundle` (in process): flags to manifests; bad input: status 2, one line."
    from aimass.cli import main
    assert main(["bundle", "churn:v1", str(tmp_path/"svc"), "--k8s", "--replicas", "3", "--max-replicas", "9", "--memory", "1Gi",
                 "--no-check"]) == 0
    hpa = yaml.safe_load((tmp_path/"svc"/"k8s"/"hpa.yaml").read_text())
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    capsys.readouterr()
    assert main(["bundle", "churn:v1", str(tmp_path/"bad"), "--k8s", "--replicas", "4", "--max-replicas", "2"]) == 2
    assert capsys.readouterr().err == "aimass: --max-replicas must be a whole number of at least replicas (4), not 2.\n"  # named as its flag
    assert not (tmp_path/"bad").exists()


@pytest.mark.slow
def test_console_script_help():
    r = subprocess.run([str(ROOT/".venv"/"bin"/"aimass"), "bundle", "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and all(f in r.stdout for f in ("--k8s", "--replicas", "--max-replicas", "--memory", "--image"))


@pytest.mark.slow
def test_probe_endpoints_answer_without_the_api_key(kube, tmpdirs):
    "kubelet sends no X-API-Key: with the Secret's key set, the probes' paths still answer 200 and /predict needs the key."
    b, docs = kube
    dep = _one(docs, "k8s/deployment.yaml")
    probes = [_container(dep["spec"]["template"]["spec"])[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    srv = BundleServer(sys.executable, b.path, *tmpdirs, env={"AIMASS_API_KEY": "s3cret"})
    try:
        srv.wait_healthy()
        import httpx
        for path in probes:
            r = httpx.get(srv.url + path, timeout=10)
            assert r.status_code == 200, (path, r.status_code, r.text)
        assert httpx.post(srv.url + "/predict", json={"instances": [{"age": 30}]}, timeout=10).status_code == 401
    finally:
        assert srv.stop()
