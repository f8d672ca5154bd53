"""AI Hub jobs: the no-token path stops before any work; the job graph against a mocked ``qai_hub``."""

import types

import pytest

from diffusers_neodragon.export import aihub


class FakeJob:
    def __init__(self, kind, **kwargs):
        self.kind, self.kwargs = kind, kwargs

    def get_target_model(self):
        return f"target-of-{self.kind}:{self.kwargs.get('name')}"


def fake_hub():
    calls = []

    def record(kind):
        def submit(*args, **kwargs):
            if args:
                kwargs["models"] = args[0]
            calls.append((kind, kwargs))
            return FakeJob(kind, **kwargs)

        return submit

    hub = types.SimpleNamespace(
        Device=lambda name: f"device:{name}", submit_compile_job=record("compile"), submit_link_job=record("link"),
        submit_profile_job=record("profile"), submit_inference_job=record("inference"),
    )
    return hub, calls


def write_ini(path, token):
    path.write_text(f"[api]\napi_token = {token}\napi_url = https://app.aihub.qualcomm.com\n")
    return path


def test_no_token_stops_before_any_work_and_says_how_to_configure(tmp_path, monkeypatch):
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing.ini"))
    hub, calls = fake_hub()
    with pytest.raises(aihub.AIHubConfigurationError, match="qai-hub configure --api_token"):
        aihub.submit_jobs(tmp_path / "no-export-needed", "Snapdragon 8 Elite QRD", hub=hub)
    assert calls == []
    write_ini(tmp_path / "empty.ini", "")
    with pytest.raises(aihub.AIHubConfigurationError, match="no API token"):
        aihub.require_token(tmp_path / "empty.ini")


def test_cli_refuses_aihub_without_token_before_loading_anything(tmp_path, monkeypatch, capsys):
    from diffusers_neodragon_cli import main

    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing.ini"))
    code = main(["export", str(tmp_path / "does-not-exist"), "--output", str(tmp_path / "out"),
                 "--aihub-device", "Snapdragon X Elite CRD"])
    assert code == 2
    assert "qai-hub configure --api_token" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_job_graph_links_the_three_stages_into_one_context_binary(tmp_path):
    from diffusers_neodragon.export.exporter import MANIFEST_FORMAT, write_manifest

    components = {}
    for name, kind in [("text_encoder", "text_encoder"), ("transformer_stage_0", "transformer_stage"),
                       ("transformer_stage_1", "transformer_stage"), ("transformer_stage_2", "transformer_stage"),
                       ("decoder_step", "decoder_step")]:
        components[name] = {"file": f"{name}.onnx", "kind": kind,
                            "inputs": {"x": {"shape": [1, 4], "dtype": "float32"}}, "outputs": {}}
    write_manifest(tmp_path, {"format": MANIFEST_FORMAT, "components": components})
    hub, calls = fake_hub()
    plan = aihub.submit_jobs(tmp_path, "Snapdragon 8 Elite QRD", "fp16", hub=hub,
                             config_path=write_ini(tmp_path / "client.ini", "secret"))
    kinds = [(job.kind, job.name) for job in plan]
    assert kinds[:6] == [("compile", "text_encoder"), ("compile", "decoder_step"), ("compile", "transformer_stage_0"),
                         ("compile", "transformer_stage_1"), ("compile", "transformer_stage_2"),
                         ("link", "transformer_stages")]
    assert sorted(kinds[6:]) == sorted((k, n) for n in components for k in ("profile", "inference"))
    compiles = {kw["name"]: kw for kind, kw in calls if kind == "compile"}
    assert "--target_runtime qnn_context_binary" in compiles["neodragon_text_encoder"]["options"]
    assert "--quantize_full_type float16" in compiles["neodragon_text_encoder"]["options"]
    assert "--target_runtime qnn_dlc" in compiles["neodragon_transformer_stage_1"]["options"]
    assert compiles["neodragon_decoder_step"]["input_specs"] == {"x": ((1, 4), "float32")}
    assert all(kw["device"] == "device:Snapdragon 8 Elite QRD" for _, kw in calls)
    (link,) = [kw for kind, kw in calls if kind == "link"]
    assert link["models"] == [f"target-of-compile:neodragon_transformer_stage_{s}" for s in range(3)]
    stage_profiles = [kw for kind, kw in calls if kind == "profile" and "stage" in kw["name"]]
    assert {kw["model"] for kw in stage_profiles} == {"target-of-link:neodragon_transformer_stages"}
    assert {kw["options"] for kw in stage_profiles} == {
        f"--qnn_options context_enable_graphs=transformer_stage_{s}" for s in range(3)}


def test_w8a16_jobs_need_the_quantised_graphs(tmp_path):
    from diffusers_neodragon.export.exporter import MANIFEST_FORMAT, write_manifest

    write_manifest(tmp_path, {"format": MANIFEST_FORMAT, "components": {
        "decoder_step": {"file": "decoder_step.onnx", "kind": "decoder_step", "inputs": {}, "outputs": {}}}})
    hub, _ = fake_hub()
    with pytest.raises(FileNotFoundError, match="w8a16"):
        aihub.submit_jobs(tmp_path, "Snapdragon X Elite CRD", "w8a16", hub=hub,
                          config_path=write_ini(tmp_path / "client.ini", "secret"))
