#!/usr/bin/env python3
"""Regenerates deploy-manifests/manifests/*.json, so createOptions strings stay valid JSON.

Edit this file, run `python3 deploy-manifests/tools/generate.py`, then
`connected-registry manifest check deploy-manifests/manifests/*.json`.
"""
import json, os

IMAGE_VERSION = "0.1.0"
LOG = {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
MiB = 1024 * 1024
CPU = 1_000_000_000  # NanoCpus for one CPU


def opts(d):
    return json.dumps(d, separators=(",", ":"))


def env(d):
    return {k: {"value": v} for k, v in d.items()}


def manifest(layer):
    lower = layer == "lower"
    with_proxy = layer in ("top", "lower")
    sys_reg = "$upstream:443" if lower else "mcr.microsoft.com"
    our_reg = "$upstream:443" if lower else "<REGISTRY_ADDRESS>"
    creds = (
        {"parent": {"address": "$upstream:443", "username": "<PARENT_CLIENT_TOKEN_NAME>", "password": "<PARENT_CLIENT_TOKEN_PASSWORD>"}}
        if lower
        else {"registry": {"address": "<REGISTRY_ADDRESS>", "username": "<REGISTRY_USERNAME>", "password": "<REGISTRY_PASSWORD>"}}
    )
    hub_ports = {"5671/tcp": [{"HostPort": "5671"}], "8883/tcp": [{"HostPort": "8883"}]}
    if not with_proxy:
        hub_ports["443/tcp"] = [{"HostPort": "443"}]
    parent = "$IOTEDGE_PARENTHOSTNAME" if lower else "<CLOUD_REGISTRY_ADDRESS>"
    registry_opts = {
        "Cmd": ["serve", "--listen", "0.0.0.0:8080"],
        "HostConfig": {
            "Binds": ["<REGISTRY_DATA_DIR>:/var/acr/data"],
            "LogConfig": LOG,
            "Memory": 1024 * MiB,
            "NanoCpus": CPU,
        },
    }
    if not with_proxy:
        registry_opts["HostConfig"]["PortBindings"] = {"8080/tcp": [{"HostPort": "8080"}]}
    if lower:
        # The parent's API proxy serves a certificate from the edge CA chain, not a public CA:
        # sync verifies it against the same root CA this layer's API proxy trusts (only that
        # file is bound, not the proxy's key).
        registry_opts["Cmd"] += ["--trust", "/certs/parent-root-ca.pem"]
        registry_opts["HostConfig"]["Binds"].append("<PROXY_CERT_DIR>/root-ca.pem:/certs/parent-root-ca.pem:ro")
    modules = {
        "connectedRegistry": {
            "type": "docker",
            "version": "1.0",
            "status": "running",
            "restartPolicy": "always",
            "startupOrder": 1,
            "settings": {"image": f"{our_reg}/connected-registry:{IMAGE_VERSION}", "createOptions": opts(registry_opts)},
            "env": env({
                "ACR_REGISTRY_CONNECTION_STRING": "ConnectedRegistryName=<CONNECTED_REGISTRY_NAME>;SyncTokenName=<SYNC_TOKEN_NAME>;"
                "SyncTokenPassword=<SYNC_TOKEN_PASSWORD>;ParentGatewayEndpoint=" + parent + ";ParentEndpointProtocol=https",
                "ACR_REGISTRY_DATA_VOLUME": "/var/acr/data",
            }),
        }
    }
    if with_proxy:
        # The API proxy module reaches the registry over the IoT Edge network and names the
        # client in X-Forwarded-For; only peers in this range are believed (failed logins count
        # against the client, not the proxy). Docker's default bridge pools; narrow it to the
        # `azure-iot-edge` network's subnet (`docker network inspect azure-iot-edge`).
        modules["connectedRegistry"]["env"]["CONNECTED_REGISTRY_TRUSTED_PROXY"] = {"value": "172.16.0.0/12"}
        cmd = ["proxy", "--cert", "/certs/server-chain.pem", "--key", "/certs/server-key.pem"]
        binds = ["<PROXY_CERT_DIR>:/certs:ro"]
        if lower:
            cmd += ["--trust", "/certs/root-ca.pem"]
        else:
            cmd += ["--default", "https://<CLOUD_REGISTRY_ADDRESS>:443", "--trust", "/etc/ssl/certs/ca-certificates.crt"]
            binds.append("/etc/ssl/certs:/etc/ssl/certs:ro")
        modules["IoTEdgeAPIProxy"] = {
            "type": "docker",
            "version": "1.0",
            "status": "running",
            "restartPolicy": "always",
            "startupOrder": 2,
            "settings": {
                "image": f"{our_reg}/connected-registry:{IMAGE_VERSION}",
                "createOptions": opts({
                    "Cmd": cmd,
                    "HostConfig": {
                        "PortBindings": {"443/tcp": [{"HostPort": "443"}]},
                        "Binds": binds,
                        "LogConfig": LOG,
                        "Memory": 256 * MiB,
                        "NanoCpus": CPU // 2,
                    },
                }),
            },
            "env": env({
                "NGINX_DEFAULT_PORT": "443",
                "CONNECTED_ACR_ROUTE_ADDRESS": "connectedRegistry:8080",
            }),
        }
    agent_env = {"UpstreamProtocol": "Amqp", "storageFolder": "/iotedge/storage", "SendRuntimeQualityTelemetry": "false"}
    hub_env = {"UpstreamProtocol": "Amqp", "storageFolder": "/iotedge/storage", "OptimizeForPerformance": "false"}
    return {
        "modulesContent": {
            "$edgeAgent": {
                "properties.desired": {
                    "schemaVersion": "1.1",
                    "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25", "registryCredentials": creds}},
                    "systemModules": {
                        "edgeAgent": {
                            "type": "docker",
                            "settings": {
                                "image": f"{sys_reg}/azureiotedge-agent:<IOTEDGE_VERSION>",
                                "createOptions": opts({"HostConfig": {
                                    "Binds": ["<EDGE_AGENT_STORAGE_DIR>:/iotedge/storage"],
                                    "LogConfig": LOG,
                                    "Memory": 256 * MiB,
                                    "NanoCpus": CPU // 2,
                                }}),
                            },
                            "env": env(agent_env),
                        },
                        "edgeHub": {
                            "type": "docker",
                            "status": "running",
                            "restartPolicy": "always",
                            "startupOrder": 0,
                            "settings": {
                                "image": f"{sys_reg}/azureiotedge-hub:<IOTEDGE_VERSION>",
                                "createOptions": opts({"HostConfig": {
                                    "PortBindings": hub_ports,
                                    "Binds": ["<EDGE_HUB_STORAGE_DIR>:/iotedge/storage"],
                                    "LogConfig": LOG,
                                    "Memory": 512 * MiB,
                                    "NanoCpus": CPU,
                                }}),
                            },
                            "env": env(hub_env),
                        },
                    },
                    "modules": modules,
                }
            },
            "$edgeHub": {
                "properties.desired": {
                    "schemaVersion": "1.1",
                    "routes": {"upstream": {"route": "FROM /messages/* INTO $upstream", "priority": 0, "timeToLiveSecs": 86400}},
                    "storeAndForwardConfiguration": {"timeToLiveSecs": 86400},
                }
            },
        }
    }


here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "manifests")
for layer in ("top", "lower", "single"):
    with open(os.path.join(here, f"{layer}-layer.json"), "w") as f:
        json.dump(manifest(layer), f, indent=2)
        f.write("\n")
