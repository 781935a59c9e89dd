"""Config parity: each runnel service gets the same RUNNEL__ settings on AWS (the Terraform
module, infra/terraform/aws) as in the compose cluster (infra/compose), except addresses and
secrets, which are listed below with their reasons. Also the same command and health check.

Reads the compose file with PyYAML, its runnel.toml with tomllib and the module's HCL with
python-hcl2; run by scripts/check-terraform.sh (pytest).
"""

import os
import subprocess
import tomllib
import unittest
from pathlib import Path

import hcl2
import yaml

INFRA = Path(__file__).resolve().parents[2]
# The runnel binary that judges the settings: RUNNEL_BIN, else the workspace's debug build.
RUNNEL_BIN = Path(os.environ.get("RUNNEL_BIN", INFRA.parent / "target" / "debug" / "runnel"))
COMPOSE = INFRA / "compose"
MODULE = INFRA / "terraform" / "aws"

# compose service -> the module's service (the compose cluster runs two stream-processors).
SERVICES = {
    "ingest": "ingest",
    "stream-processor-1": "stream-processor",
    "stream-processor-2": "stream-processor",
    "serving": "serving",
    "batch-reprocessor": "batch-reprocessor",
}

# Settings compose has and the module does not give as they are, and why.
ADDRESSES = {
    # compose: MinIO's bucket; the module: its S3 bucket and prefix (local.address_settings).
    "RUNNEL__STORAGE__OBJECT_STORE_URL": "the bucket",
    # compose: the brokers' container names; the module: MSK's TLS brokers or yours.
    "RUNNEL__STORAGE__LOG__KAFKA__BOOTSTRAP_SERVERS": "the brokers",
}
ADDRESS_PREFIXES = {
    # compose: MinIO's endpoint, plain HTTP and a region; on AWS, S3 itself, found from
    # AWS_REGION.
    "RUNNEL__STORAGE__OBJECT_STORE_OPTIONS__": "the S3 endpoint",
}
COMPOSE_ONLY = {
    # Static membership needs a name that stays with an instance across restarts: compose's
    # containers have one, ECS tasks do not.
    "RUNNEL__STORAGE__LOG__KAFKA__GROUP_INSTANCE_ID",
}
# A listener beyond loopback needs its token, so on AWS each goes only to the service that
# serves it (compose mounts one runnel.toml and one env file into every container).
LISTENERS = {
    "RUNNEL__INGEST__LISTEN": "ingest",
    "RUNNEL__INGEST__AUTH_TOKEN": "ingest",
    "RUNNEL__SERVING__LISTEN": "serving",
    "RUNNEL__SERVING__AUTH_TOKEN": "serving",
}


def env_name(path):
    """`storage.log.kafka.replication-factor` -> RUNNEL__STORAGE__LOG__KAFKA__REPLICATION_FACTOR."""
    return "RUNNEL__" + "__".join(part.upper().replace("-", "_") for part in path)


def env_value(value):
    """A TOML scalar as an environment variable's text (runnel parses it back as TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flatten(table, path=()):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from flatten(value, path + (key,))
        elif key != "version":
            yield env_name(path + (key,)), env_value(value)


def compose_settings():
    """Per compose service: its RUNNEL__ settings (name -> value; secrets -> None), command
    and health check."""
    with open(COMPOSE / "docker-compose.yml") as file:
        compose = yaml.safe_load(file)
    with open(COMPOSE / "runnel.toml", "rb") as file:
        toml_settings = dict(flatten(tomllib.load(file)))
    secrets = {}
    for line in (COMPOSE / "runnel.env.example").read_text().splitlines():
        name = line.split("=", 1)[0].strip()
        if name.startswith("RUNNEL__"):
            secrets[name] = None
    services = {}
    for name in SERVICES:
        service = compose["services"][name]
        environment = service.get("environment", {})
        settings = dict(toml_settings)
        settings.update(
            {k: env_value(v) for k, v in environment.items() if k.startswith("RUNNEL__")}
        )
        settings.update(secrets)
        health = service.get("healthcheck", {}).get("test")
        services[name] = {
            "settings": settings,
            "command": service["command"],
            "health": health,
            "config_file": environment.get("RUNNEL_CONFIG"),
        }
    return services


def module_locals():
    merged = {}
    for path in sorted(MODULE.glob("*.tf")):
        with open(path) as file:
            document = hcl2.load(file)
        for block in document.get("locals", []):
            merged.update({k: v[0] if isinstance(v, list) else v for k, v in block.items()})
    return merged


def module_settings():
    """Per module service: RUNNEL__ settings as compose would compare them (addresses as
    `ADDRESS`, secrets as None), command and health check. Left out: the librdkafka properties
    (local.kafka_property_settings: how to reach the brokers, TLS to MSK; compose has none),
    AWS_REGION, RUST_LOG and TMPDIR (not runnel settings) and var.extra_environment (the user's)."""
    locals_ = module_locals()
    services = {}
    for name, service in locals_["services"].items():
        settings = dict(locals_["settings"])
        settings.update({k: "ADDRESS" for k in locals_["address_settings"]})
        settings.update(locals_["service_settings"][name])
        settings.update({k: None for k in locals_["service_secrets"][name]})
        health = service["health"]
        services[name] = {
            "settings": settings,
            "command": service["command"],
            "health": None if health is None else ["CMD"] + health,
        }
    return services, locals_


class ParityTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.compose = compose_settings()
        self.module, self.locals = module_settings()

    def test_every_service_has_compose_settings_but_addresses_and_secrets(self):
        for compose_name, module_name in SERVICES.items():
            with self.subTest(service=compose_name):
                want = {}
                for name, value in self.compose[compose_name]["settings"].items():
                    if name in COMPOSE_ONLY:
                        continue
                    if name in LISTENERS and LISTENERS[name] != module_name:
                        continue
                    if name.startswith(tuple(ADDRESS_PREFIXES)):
                        continue
                    want[name] = "ADDRESS" if name in ADDRESSES else value
                self.assertEqual(
                    self.module[module_name]["settings"],
                    want,
                    f"{module_name}: the module's RUNNEL__ settings (left) differ from compose's "
                    f"{compose_name} (right); change both, or list the difference in "
                    f"{Path(__file__).name} with its reason",
                )

    def test_secrets_come_from_secrets_manager_not_plain_environment(self):
        secrets = {n for n, v in self.compose["ingest"]["settings"].items() if v is None}
        self.assertEqual(secrets, {"RUNNEL__INGEST__AUTH_TOKEN", "RUNNEL__SERVING__AUTH_TOKEN"})
        plain = set(self.locals["settings"]) | set(self.locals["address_settings"])
        for service in self.locals["service_settings"].values():
            plain |= set(service)
        self.assertFalse(secrets & plain, "a token is set in plain environment variables")
        for secret in secrets:
            owner = LISTENERS[secret]
            self.assertIn(secret, self.locals["service_secrets"][owner])

    def test_same_command_and_health_check(self):
        for compose_name, module_name in SERVICES.items():
            with self.subTest(service=compose_name):
                self.assertEqual(
                    self.module[module_name]["command"], self.compose[compose_name]["command"]
                )
                self.assertEqual(
                    self.module[module_name]["health"], self.compose[compose_name]["health"]
                )

    def test_the_exceptions_are_still_needed(self):
        """Every listed difference exists: an exception nobody needs any more is removed."""
        compose_names = set()
        for service in self.compose.values():
            compose_names |= set(service["settings"])
        for name in list(ADDRESSES) + list(COMPOSE_ONLY) + list(LISTENERS):
            self.assertIn(name, compose_names, f"{name} is listed as an exception but compose has no such setting")
        for prefix in ADDRESS_PREFIXES:
            self.assertTrue(
                any(n.startswith(prefix) for n in compose_names),
                f"{prefix} is listed but compose has no such setting",
            )


class RunnelAcceptsTheSettingsTest(unittest.TestCase):
    """runnel itself loads each service's settings as the module gives them (with stand-ins for
    the addresses and tokens AWS gives), the librdkafka properties included: `runnel config`
    validates the config and prints it."""

    def test_runnel_config_accepts_each_services_environment(self):
        if not RUNNEL_BIN.exists():
            if os.environ.get("RUNNEL_REQUIRE_BIN") == "1":
                self.fail(f"{RUNNEL_BIN} is missing (cargo build -p runnel)")
            self.skipTest(f"{RUNNEL_BIN} is missing (cargo build -p runnel)")
        locals_ = module_locals()
        properties = {}
        for block in hcl2.load(open(MODULE / "variables.tf"))["variable"]:
            if "kafka_properties" in block:
                properties = block["kafka_properties"]["default"][0]
        stand_ins = {
            "RUNNEL__STORAGE__OBJECT_STORE_URL": "s3://runnel-bucket/runnel",
            "RUNNEL__STORAGE__LOG__KAFKA__BOOTSTRAP_SERVERS": "b-1.runnel.kafka.eu-west-1.amazonaws.com:9094",
        }
        self.assertEqual(set(stand_ins), set(locals_["address_settings"]))
        for name in locals_["services"]:
            with self.subTest(service=name):
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": "/tmp"}
                env.update(locals_["settings"])
                env.update(stand_ins)
                env.update(
                    {
                        "RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__" + key.upper().replace(".", "_"): value
                        for key, value in properties.items()
                    }
                )
                # MSK's IAM authentication, as the module sets it (local.kafka_transport_settings).
                env["RUNNEL__STORAGE__LOG__KAFKA__AWS_MSK_IAM"] = "true"
                env.update(locals_["service_settings"][name])
                env.update({secret: "a-token-from-secrets-manager" for secret in locals_["service_secrets"][name]})
                run = subprocess.run(
                    [str(RUNNEL_BIN), "config"], env=env, capture_output=True, text=True, timeout=60
                )
                self.assertEqual(run.returncode, 0, f"runnel refuses {name}'s settings:\n{run.stderr}")
                for key in properties:
                    self.assertIn(f'"{key.replace(".", "-")}"', run.stdout)
                self.assertIn("exactly_once: true", run.stdout)
                self.assertIn("aws_msk_iam: true", run.stdout)


if __name__ == "__main__":
    unittest.main()
