"""Running a Hydra app as a ``divcfg`` subcommand, with one error path for bad input."""
from __future__ import annotations

import sys
from typing import Callable

import hydra

from divcfg.common.config.checks import ConfigError
from divcfg.common.config.schema import CONF_DIR, register_configs


def run_hydra(config_name: str, app: Callable, argv: list[str] | None) -> int:
    """Compose ``conf/<config_name>.yaml`` with the overrides in ``argv`` and call ``app(cfg)``.

    ``--help`` (``-h``) lists every config key with its type, default and docstring
    (:func:`divcfg.common.config.help.config_help`); Hydra's own flags work (``--hydra-help``, ``--cfg job``,
    ``--multirun``). A bad value (a ConfigError, ValueError or FileNotFoundError raised before or during the run)
    ends with a one-line message and exit status 2.
    """


    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        from divcfg.common.config.help import config_help
        print(config_help(config_name, [a for a in args if not a.startswith("-")]))
        return 0
    register_configs()
    status = {"code": 0}

    def task(cfg):
        try:
            app(cfg)
        except (ConfigError, ValueError, FileNotFoundError) as e:
            print(f"divcfg {config_name}: error: {e}", file=sys.stderr)
            status["code"] = 2
            if "--multirun" in args or "-m" in args:
                raise

    main = hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [f"divcfg {config_name}", *args]
    try:
        main()
    except SystemExit as e:  # Hydra exits 1 on a bad override; keep its message, return its code
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = saved
    return status["code"]
