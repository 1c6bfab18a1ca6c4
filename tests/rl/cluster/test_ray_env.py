"""rl/cluster/ray_env.py: which of env.modules travel to Ray's workers."""

import sys

from rl.cluster.ray_env import code_to_ship


def test_modules_outside_the_installed_packages_travel_as_their_file_or_package_directory(tmp_path, monkeypatch):
    (tmp_path / "lone_env.py").write_text("X = 1\n")
    package = tmp_path / "envpkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "games.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import envpkg.sub.games  # noqa: F401
    import lone_env  # noqa: F401

    try:
        shipped = code_to_ship(["lone_env", "envpkg.sub.games", "envpkg", "yaml", "rollout.envs.kbsearch"])
    finally:
        for name in ("lone_env", "envpkg", "envpkg.sub", "envpkg.sub.games"):
            sys.modules.pop(name, None)
    # The single file and the top-level package (once); installed packages (yaml) and ours stay.
    assert shipped == [str((tmp_path / "lone_env.py").resolve()), str(package.resolve())]
