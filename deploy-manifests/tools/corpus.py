#!/usr/bin/env python3
"""Regenerates deploy-manifests/tests/corpus/: one broken manifest per checker rule, made
from the shipped top-layer manifest with one mistake, and expected.json saying which
finding (severity, rule, path) each must produce and nothing else.

The expectations are written here by hand, never taken from the checker's output.
"""
import copy, json, os

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..")
out = os.path.join(root, "tests", "corpus")
base_text = open(os.path.join(root, "manifests", "top-layer.json")).read()
BASE = json.loads(base_text)

A = "/modulesContent/$edgeAgent/properties.desired"
H = "/modulesContent/$edgeHub/properties.desired"
REG = A + "/modules/connectedRegistry"
PROXY = A + "/modules/IoTEdgeAPIProxy"
HUB = A + "/systemModules/edgeHub"
AGENT = A + "/systemModules/edgeAgent"


def agent(d):
    return d["modulesContent"]["$edgeAgent"]["properties.desired"]


def hubd(d):
    return d["modulesContent"]["$edgeHub"]["properties.desired"]


def mod(d, name):
    a = agent(d)
    return a["systemModules"][name] if name in ("edgeAgent", "edgeHub") else a["modules"][name]


def edit_opts(d, name, f):
    m = mod(d, name)
    o = json.loads(m["settings"]["createOptions"])
    f(o)
    m["settings"]["createOptions"] = json.dumps(o, separators=(",", ":"))


cases = {}
expected = {}


def case(name, mutate, *findings):
    d = copy.deepcopy(BASE)
    mutate(d)
    cases[name] = json.dumps(d, indent=2) + "\n"
    expected[name] = [{"severity": s, "rule": r, "path": p} for (s, r, p) in findings]


def raw(name, text, *findings):
    cases[name] = text
    expected[name] = [dict(zip(("severity", "rule", "path", "line", "column"), f)) for f in findings]


# --- JSON and schema
lines = base_text.split("\n")
# Drop the comma after the first `"schemaVersion": "1.1",` so the next key has no separator.
i = next(n for n, l in enumerate(lines) if '"schemaVersion": "1.1",' in l)
lines[i] = lines[i].rstrip(",")
col = len(lines[i + 1]) - len(lines[i + 1].lstrip()) + 1
raw("json-syntax-missing-comma.json", "\n".join(lines), ("error", "json-syntax", "", i + 2, col))
cut = base_text[: len(base_text) // 2]
raw("json-syntax-truncated.json", cut, ("error", "json-syntax", "", cut.count("\n") + 1, len(cut.split("\n")[-1])))
dup_lines = base_text.split("\n")
k = next(n for n, l in enumerate(dup_lines) if '"restartPolicy": "always",' in l)
dup_lines.insert(k + 1, dup_lines[k])
raw(
    "duplicate-key.json",
    "\n".join(dup_lines),
    ("error", "duplicate-key", HUB + "/restartPolicy", k + 2, len(dup_lines[k]) - len(dup_lines[k].lstrip()) + 1),
)
case("required-section.json", lambda d: d["modulesContent"].pop("$edgeHub"), ("error", "required-section", "/modulesContent/$edgeHub"))
case("schema-version.json", lambda d: agent(d).__setitem__("schemaVersion", "2.0"), ("error", "schema-version", A + "/schemaVersion"))
case("module-fields.json", lambda d: mod(d, "connectedRegistry").pop("restartPolicy"), ("error", "module-fields", REG + "/restartPolicy"))
case(
    "create-options.json",
    lambda d: mod(d, "IoTEdgeAPIProxy")["settings"].__setitem__("createOptions", mod(d, "IoTEdgeAPIProxy")["settings"]["createOptions"][:-2]),
    ("error", "create-options", PROXY + "/settings/createOptions"),
)


def gap(d):
    s = mod(d, "connectedRegistry")["settings"]
    o = s["createOptions"]
    s["createOptions"], s["createOptions02"] = o[:40], o[40:]


case("create-options-gap.json", gap, ("error", "create-options", REG + "/settings/createOptions02"))
case(
    "route-syntax.json",
    lambda d: hubd(d)["routes"].__setitem__("upstream", "FROM /messages/* INTO upstream"),
    ("error", "route-syntax", H + "/routes/upstream"),
)
case(
    "route-target.json",
    lambda d: hubd(d)["routes"].__setitem__("sensorToCloud", "FROM /messages/modules/sensor/* INTO $upstream"),
    ("error", "route-target", H + "/routes/sensorToCloud"),
)

# --- Images
def set_image(name, image):
    return lambda d: mod(d, name)["settings"].__setitem__("image", image)


case("image-debug.json", set_image("connectedRegistry", "<REGISTRY_ADDRESS>/connected-registry:0.1.0.debug"), ("error", "image-debug", REG + "/settings/image"))
case("image-latest.json", set_image("IoTEdgeAPIProxy", "<REGISTRY_ADDRESS>/connected-registry:latest"), ("error", "image-latest", PROXY + "/settings/image"))
case("image-no-tag.json", set_image("IoTEdgeAPIProxy", "<REGISTRY_ADDRESS>/connected-registry"), ("error", "image-latest", PROXY + "/settings/image"))
case("image-rolling-tag.json", set_image("edgeHub", "mcr.microsoft.com/azureiotedge-hub:1.5"), ("warning", "image-rolling-tag", HUB + "/settings/image"))
case(
    "registry-credentials.json",
    set_image("IoTEdgeAPIProxy", "other.example.com/connected-registry:0.1.0"),
    ("error", "registry-credentials", PROXY + "/settings/image"),
)
case(
    "registry-spelling.json",
    lambda d: agent(d)["runtime"]["settings"]["registryCredentials"]["registry"].__setitem__("address", "https://<REGISTRY_ADDRESS>/"),
    ("warning", "registry-spelling", A + "/runtime/settings/registryCredentials/registry/address"),
)

# --- Runtime
case("upstream-protocol.json", lambda d: mod(d, "edgeHub")["env"]["UpstreamProtocol"].__setitem__("value", "AmqpWs"), ("error", "upstream-protocol", HUB + "/env/UpstreamProtocol/value"))
case("optimize-for-performance.json", lambda d: mod(d, "edgeHub")["env"].pop("OptimizeForPerformance"), ("info", "optimize-for-performance", HUB + "/settings/createOptions#/HostConfig/Memory"))
case("env-double-underscore.json", lambda d: mod(d, "edgeHub")["env"].__setitem__("mqttSettings_enabled", {"value": "false"}), ("error", "env-double-underscore", HUB + "/env/mqttSettings_enabled"))
case("time-to-live.json", lambda d: hubd(d)["storeAndForwardConfiguration"].__setitem__("timeToLiveSecs", 0), ("error", "time-to-live", H + "/storeAndForwardConfiguration/timeToLiveSecs"))
case("time-to-live-short.json", lambda d: hubd(d)["routes"]["upstream"].__setitem__("timeToLiveSecs", 30), ("warning", "time-to-live", H + "/routes/upstream/timeToLiveSecs"))
case("module-update-mode.json", lambda d: mod(d, "edgeAgent")["env"].__setitem__("ModuleUpdateMode", {"value": "Blocking"}), ("error", "module-update-mode", AGENT + "/env/ModuleUpdateMode/value"))

# --- Security and resources
case("privileged.json", lambda d: edit_opts(d, "connectedRegistry", lambda o: o["HostConfig"].__setitem__("Privileged", True)), ("error", "privileged", REG + "/settings/createOptions#/HostConfig/Privileged"))
case("cap-add.json", lambda d: edit_opts(d, "IoTEdgeAPIProxy", lambda o: o["HostConfig"].__setitem__("CapAdd", ["NET_BIND_SERVICE", "SYS_ADMIN"])), ("error", "cap-add", PROXY + "/settings/createOptions#/HostConfig/CapAdd"))
case("host-network.json", lambda d: edit_opts(d, "IoTEdgeAPIProxy", lambda o: o["HostConfig"].__setitem__("NetworkMode", "host")), ("warning", "host-network", PROXY + "/settings/createOptions#/HostConfig/NetworkMode"))
case("memory-limit.json", lambda d: edit_opts(d, "IoTEdgeAPIProxy", lambda o: o["HostConfig"].pop("Memory")), ("warning", "memory-limit", PROXY + "/settings/createOptions#/HostConfig/Memory"))
case("cpu-limit.json", lambda d: edit_opts(d, "connectedRegistry", lambda o: o["HostConfig"].pop("NanoCpus")), ("warning", "cpu-limit", REG + "/settings/createOptions#/HostConfig/NanoCpus"))
case("log-limits.json", lambda d: edit_opts(d, "connectedRegistry", lambda o: o["HostConfig"]["LogConfig"]["Config"].pop("max-file")), ("warning", "log-limits", REG + "/settings/createOptions#/HostConfig/LogConfig"))
case("host-storage.json", lambda d: edit_opts(d, "edgeHub", lambda o: o["HostConfig"].pop("Binds")), ("warning", "host-storage", HUB + "/settings/createOptions#/HostConfig/Binds"))
case("host-storage-registry.json", lambda d: mod(d, "connectedRegistry")["env"].pop("ACR_REGISTRY_DATA_VOLUME"), ("warning", "host-storage", REG + "/env/ACR_REGISTRY_DATA_VOLUME"))

# --- Ports: edgeHub also takes 443, the API proxy's port (the classic mistake).
case(
    "port-conflict.json",
    lambda d: edit_opts(d, "edgeHub", lambda o: o["HostConfig"]["PortBindings"].__setitem__("443/tcp", [{"HostPort": "443"}])),
    ("error", "port-conflict", PROXY + "/settings/createOptions#/HostConfig/PortBindings/443~1tcp"),
)

# --- Size: 34 env values of 1000 bytes push $edgeAgent past 32 KiB.
case(
    "twin-size.json",
    lambda d: mod(d, "connectedRegistry")["env"].update({f"PADDING_{n:02}": {"value": "x" * 1000} for n in range(34)}),
    ("error", "twin-size", A),
)

# --- Connected registry and API proxy
def cs(f):
    def m(d):
        v = mod(d, "connectedRegistry")["env"]["ACR_REGISTRY_CONNECTION_STRING"]
        v["value"] = f(v["value"])
    return m


case("connection-string.json", cs(lambda v: v.replace("SyncTokenName=<SYNC_TOKEN_NAME>;", "")), ("error", "connection-string", REG + "/env/ACR_REGISTRY_CONNECTION_STRING/value"))
case(
    "parent-protocol.json",
    cs(lambda v: v.replace("<CLOUD_REGISTRY_ADDRESS>", "myregistry.westeurope.data.azurecr.io").replace("=https", "=http")),
    ("error", "parent-protocol", REG + "/env/ACR_REGISTRY_CONNECTION_STRING/value"),
)
case("proxy-route.json", lambda d: mod(d, "IoTEdgeAPIProxy")["env"]["CONNECTED_ACR_ROUTE_ADDRESS"].__setitem__("value", "registry:8080"), ("error", "proxy-route", PROXY + "/env/CONNECTED_ACR_ROUTE_ADDRESS/value"))


def edge_parent(d):
    """The lower-layer shape: the parent is the parent device's API proxy, over https."""
    cs(lambda v: v.replace("<CLOUD_REGISTRY_ADDRESS>", "$IOTEDGE_PARENTHOSTNAME"))(d)


case("parent-trust.json", edge_parent, ("error", "parent-trust", REG + "/settings/createOptions#/Cmd"))


def trust_not_bound(d):
    edge_parent(d)
    edit_opts(d, "connectedRegistry", lambda o: o["Cmd"].extend(["--trust", "/certs/parent-root-ca.pem"]))


case("parent-trust-unbound.json", trust_not_bound, ("error", "parent-trust", REG + "/settings/createOptions#/HostConfig/Binds"))


# --- Clean variants that must give no finding at all.
def split(d):
    s = mod(d, "connectedRegistry")["settings"]
    o = s["createOptions"]
    s["createOptions"], s["createOptions01"], s["createOptions02"] = o[:50], o[50:100], o[100:]


case("clean-split-create-options.json", split)


def template(d):
    for name in ("connectedRegistry", "IoTEdgeAPIProxy"):
        s = mod(d, name)["settings"]
        s["image"] = "${REGISTRY_ADDRESS}/connected-registry:${IMAGE_VERSION}"
        s["createOptions"] = json.loads(s["createOptions"])
    agent(d)["runtime"]["settings"]["registryCredentials"]["registry"]["address"] = "${REGISTRY_ADDRESS}"


case("clean-template.json", template)

os.makedirs(out, exist_ok=True)
for old in os.listdir(out):
    if old.endswith(".json"):
        os.remove(os.path.join(out, old))
for name, text in cases.items():
    with open(os.path.join(out, name), "w") as f:
        f.write(text)
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=2, sort_keys=True)
    f.write("\n")
print(f"{len(cases)} corpus files")
