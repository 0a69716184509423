"""Checks the deployment files that this machine cannot run (no Docker engine,
no Envoy binary) as far as their schemas allow:

* deploy/envoy.yaml against Envoy's v3 API (the `envoy-data-plane` package:
  every field name, value type and enum, and every typed_config's @type);
* docker-compose.yml against the Compose Specification's JSON schema;
* that the two agree: Envoy's upstreams are compose services that expose the
  port Envoy dials, the compose Envoy mounts this very file, and the health
  check names a service switchboard reports.

usage: check_deploy.py <compose-spec.json>
"""

import importlib
import re
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
failures = []


def fail(message):
    failures.append(message)


def type_urls(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "@type":
                yield value
            else:
                yield from type_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from type_urls(value)


def check_envoy(path):
    config = yaml.safe_load(path.read_text())
    # Each typed_config names its message; importing its module registers it.
    for url in sorted(set(type_urls(config))):
        module = url.rsplit("/", 1)[-1].rpartition(".")[0]
        try:
            importlib.import_module("envoy_data_plane." + module)
        except ImportError:
            fail(f"{path.name}: unknown typed_config {url}")
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    try:
        Bootstrap.from_dict(config)
    except (KeyError, TypeError, ValueError) as error:
        fail(f"{path.name}: not a valid Envoy v3 bootstrap: {error}")
    return config


def check_compose(path, schema_path):
    compose = yaml.safe_load(path.read_text())
    schema = yaml.safe_load(Path(schema_path).read_text())
    # The spec declares draft 2019-09 (with a trailing '#' jsonschema does
    # not look up): name the draft.
    validator = jsonschema.Draft201909Validator(schema)
    for error in validator.iter_errors(compose):
        where = "/".join(str(p) for p in error.path)
        fail(f"{path.name}: {where}: {error.message}")
    return compose


def check_agreement(envoy, compose):
    services = compose.get("services", {})
    endpoints = [
        endpoint["endpoint"]["address"]["socket_address"]
        for cluster in envoy["static_resources"]["clusters"]
        for group in cluster["load_assignment"]["endpoints"]
        for endpoint in group["lb_endpoints"]
    ]
    if len(endpoints) < 2:
        fail("envoy.yaml: fewer than two switchboard upstreams")
    for address in endpoints:
        name, port = address["address"], str(address["port_value"])
        service = services.get(name)
        if service is None:
            fail(f"envoy.yaml: upstream {name} is not a compose service")
            continue
        if port not in [str(p) for p in service.get("expose", [])]:
            fail(f"docker-compose.yml: {name} does not expose {port}")
        listen = service.get("environment", {}).get("SWITCHBOARD_LISTEN", "")
        if not listen.endswith(":" + port):
            fail(f"docker-compose.yml: {name} listens on {listen!r}, Envoy dials {port}")
    mounts = services.get("envoy", {}).get("volumes", [])
    if not any(m.startswith("./deploy/envoy.yaml:") for m in mounts):
        fail("docker-compose.yml: the envoy service does not mount ./deploy/envoy.yaml")
    startup = (ROOT / "src" / "startup.rs").read_text()
    for cluster in envoy["static_resources"]["clusters"]:
        for check in cluster.get("health_checks", []):
            name = check.get("grpc_health_check", {}).get("service_name", "")
            if name and not re.search(r'"' + re.escape(name) + r'"', startup):
                fail(f"envoy.yaml: health check service {name!r} is not one switchboard reports")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    envoy = check_envoy(ROOT / "deploy" / "envoy.yaml")
    compose = check_compose(ROOT / "docker-compose.yml", sys.argv[1])
    if not failures:
        check_agreement(envoy, compose)
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        sys.exit(1)
    print("deploy/envoy.yaml and docker-compose.yml: valid, and they agree")


main()
