"""``linewatch`` / ``python -m linewatch``: the daemon's command line, one verb per module."""

from __future__ import annotations

from linewatch.service.verbs import VerbTable, dispatch

VERBS: VerbTable = {
    "run": ("linewatch.service.daemon", "run the inspection daemon (camera → model → MQTT)"),
    "check-config": ("linewatch.service.check_config", "validate a config file; print every problem"),
    "demo": ("linewatch.service.demo", "self-contained demo: synthetic camera, bundle, private broker"),
    "bench": ("linewatch.service.bench", "backend and whole-pipeline throughput/latency benchmark"),
    "products": ("linewatch.service.products", "list, show or verify the product bundles on disk"),
    "product": ("linewatch.service.product_command", "prepare/set the running daemon's product over MQTT"),
    "history": ("linewatch.service.history", "print decisions from the local journal"),
    "install-service": ("linewatch.service.install", "install the systemd unit, user and config skeleton"),
    "uninstall-service": ("linewatch.service.install", "remove what install-service installed"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("linewatch", "linewatch: streaming surface inspection for production lines", VERBS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
