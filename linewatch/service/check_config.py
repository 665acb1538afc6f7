"""``linewatch check-config``: validate a config file the way ``linewatch run`` would, and a little more.

Prints every problem as ``location: message`` (stderr) and exits 2; a valid config prints a short summary
(stdout) and exits 0. Beyond the schema it checks what can be checked without touching the running line:
the active product's bundle (schema, sha256 of every file, prototype shapes), the GenTL producer files and
the replay paths. It never opens the camera (the daemon may hold it) nor connects to the broker.
"""

from __future__ import annotations

import argparse
import sys

from linewatch.acquisition import (
    FolderCameraConfig,
    GenicamCameraConfig,
    SyntheticCameraConfig,
    VideoCameraConfig,
)
from linewatch.bundle.registry import load_product
from linewatch.config import LinewatchSettings, add_config_argument, format_problems, load_settings
from linewatch.errors import BundleError, ConfigError

EXIT_OK = 0
EXIT_INVALID = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def deep_problems(settings: LinewatchSettings) -> list[tuple[str, str]]:
    """Problems the schema cannot see: files that do not exist, a bundle that does not verify."""
    problems: list[tuple[str, str]] = []
    camera = settings.camera
    if isinstance(camera, GenicamCameraConfig):
        for i, cti in enumerate(camera.cti):
            if not cti.is_file():
                problems.append((f"camera.cti[{i}]", f"GenTL producer {cti} does not exist"))
    elif isinstance(camera, FolderCameraConfig):
        if not camera.path.is_dir():
            problems.append(("camera.path", f"{camera.path} is not a directory"))
    elif isinstance(camera, VideoCameraConfig) and not camera.path.is_file():
        problems.append(("camera.path", f"{camera.path} does not exist"))
    products = settings.products
    if products.active is not None:
        if not products.dir.is_dir():
            problems.append(("products.dir", f"{products.dir} is not a directory"))
        else:
            try:
                load_product(products.dir, products.active)
            except BundleError as exc:
                problems.append(("products.active", str(exc)))
    return problems


def describe_camera(settings: LinewatchSettings) -> str:
    camera = settings.camera
    if isinstance(camera, GenicamCameraConfig):
        return f"genicam ({', '.join(map(str, camera.cti))})"
    if isinstance(camera, FolderCameraConfig | VideoCameraConfig):
        return f"{camera.kind} ({camera.path})"
    if isinstance(camera, SyntheticCameraConfig):
        return f"synthetic ({camera.family}, defect rate {camera.defect_rate})"
    return str(camera.kind)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        problems = deep_problems(settings)  # only for a config the schema accepts
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        print(format_problems(exc), file=sys.stderr)
        print(f"{args.config}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EXIT_INVALID
    mqtt = settings.mqtt
    product = settings.products.active or "(none: frames are not inspected)"
    tls = "on" if mqtt.tls.enabled else "off"
    print(f"{args.config}: OK")
    print(f"  station   {settings.station.id}")
    print(f"  camera    {describe_camera(settings)}")
    print(f"  product   {product} in {settings.products.dir}")
    print(f"  inference {settings.inference.backend}")
    print(f"  mqtt      {mqtt.host}:{mqtt.port} (MQTT {mqtt.protocol}, TLS {tls}), "
          f"topics {mqtt.topic_prefix}/{settings.station.id}/...")
    print(f"  queue     {settings.queue.size} frames, overflow {settings.queue.overflow}")
    print(f"  state     {settings.state_dir}")
    return EXIT_OK
