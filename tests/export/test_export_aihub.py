"""AI Hub jobs: the no-token path stops before any work; the job graph against a mocked ``qai_hub``."""

import types

import numpy as np
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


def write_export(folder, dtype="float32", shape=(1, 4)):
    """A manifest of five tiny real ONNX graphs (Identity), so that qai-hub's own checks see real files."""
    import onnx
    from onnx import helper

    from diffusers_neodragon.export.exporter import MANIFEST_FORMAT, write_manifest

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    components = {}
    for name, kind in [("text_encoder", "text_encoder"), ("transformer_stage_0", "transformer_stage"),
                       ("transformer_stage_1", "transformer_stage"), ("transformer_stage_2", "transformer_stage"),
                       ("decoder_step", "decoder_step")]:
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name,
                                  [helper.make_tensor_value_info("x", elem, list(shape))],
                                  [helper.make_tensor_value_info("y", elem, list(shape))])
        onnx.save(helper.make_model(graph), str(folder / f"{name}.onnx"))
        components[name] = {"file": f"{name}.onnx", "kind": kind,
                            "inputs": {"x": {"shape": list(shape), "dtype": dtype}}, "outputs": {}}
    write_manifest(folder, {"format": MANIFEST_FORMAT, "components": components})
    return components


def test_job_graph_against_qai_hubs_own_client(tmp_path, monkeypatch):
    """The whole job graph through qai-hub's real Client with only its network call replaced: every check qai-hub
    makes before an upload runs on our specification, and the job messages it would send are inspected."""
    pytest.importorskip("qai_hub")
    from qai_hub import public_api_pb2 as api_pb

    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing.ini"))  # a dry run needs no token
    components = write_export(tmp_path)
    plan = aihub.submit_jobs(tmp_path, "Snapdragon 8 Elite QRD", "fp16", dry_run=True)
    client = plan[0].job._owner
    kinds = [(job.kind, job.name) for job in plan]
    assert kinds[:6] == [("compile", "text_encoder"), ("compile", "decoder_step"), ("compile", "transformer_stage_0"),
                         ("compile", "transformer_stage_1"), ("compile", "transformer_stage_2"),
                         ("link", "transformer_stages")]
    assert sorted(kinds[6:]) == sorted(("inference", n) for n in components)

    compiles = {job.name: job for job in client.submitted("create_compile_job")}
    assert len(client.submitted("create_compile_job")) == 5
    text = compiles["neodragon_text_encoder"]
    assert text.options == "--target_runtime qnn_context_binary --quantize_full_type float16"
    assert [(t.name, list(t.tensor_type.shape), t.tensor_type.dtype) for t in text.tensor_type_list.types] == [
        ("x", [1, 4], api_pb.TensorDtype.TENSOR_DTYPE_FLOAT32)]
    assert [d.name for d in text.devices.devices] == ["Snapdragon 8 Elite QRD"]
    stage_options = [job.options for job in client.submitted("create_compile_job")
                     if job.name == "neodragon_transformer_stages"]
    assert stage_options == [f"--quantize_full_type float16 --qnn_options context_enable_graphs=transformer_stage_{s}"
                             " --target_runtime qnn_dlc" for s in range(3)]

    (link,) = client.submitted("create_link_job")
    assert len(link.models.models) == 3 and link.device.name == "Snapdragon 8 Elite QRD"
    inferences = client.submitted("create_inference_job")
    assert all(job.is_profiling_on and job.dataset.dataset_id for job in inferences)
    stage_runs = [job for job in inferences if "stage" in job.name]
    linked = plan[5].job.get_target_model()
    assert {job.model.model_id for job in stage_runs} == {linked.model_id}
    assert sorted(job.options for job in stage_runs) == [
        f"--qnn_options context_enable_graphs=transformer_stage_{s}" for s in range(3)]
    assert len(client.submitted("create_and_upload_dataset")) == 5  # the sample inputs went through h5


def test_qai_hubs_checks_reject_a_malformed_specification(tmp_path, monkeypatch):
    """The same dry run fails on what qai-hub itself refuses: an empty input dimension, a dtype it does not know,
    inference data of a dtype it cannot send, a graph file that is not there."""
    qai_hub = pytest.importorskip("qai_hub")

    write_export(tmp_path, shape=(1, 0))
    with pytest.raises(qai_hub.UserError, match="empty tensor"):
        aihub.submit_jobs(tmp_path, "Snapdragon 8 Elite QRD", dry_run=True, components=["decoder_step"])
    write_export(tmp_path, dtype="float64")
    with pytest.raises(ValueError, match="Unsupported tensor dtype=float64"):
        aihub.submit_jobs(tmp_path, "Snapdragon 8 Elite QRD", dry_run=True, components=["decoder_step"])
    write_export(tmp_path)
    with pytest.raises(qai_hub.UserError, match="numpy arrays"):
        aihub.submit_jobs(tmp_path, "Snapdragon 8 Elite QRD", dry_run=True, components=["decoder_step"],
                          sample_inputs={"decoder_step": {"x": np.zeros((1, 4), np.float64)}})
    (tmp_path / "decoder_step.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="decoder_step"):
        aihub.submit_jobs(tmp_path, "Snapdragon 8 Elite QRD", dry_run=True, components=["decoder_step"])


def test_large_graphs_are_uploaded_as_a_folder_of_one_onnx_and_one_data_file(tmp_path):
    """qai-hub takes a graph with external weights only as a folder holding exactly one .onnx and one .data; our
    exporter writes <file>_data beside the graph."""
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1, 4096), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4096])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4096])], [weight])
    path = tmp_path / "transformer_stage_0.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + "_data", size_threshold=0)
    folder = aihub.upload_path(path)
    assert folder == tmp_path / "aihub" / "transformer_stage_0.onnx"
    assert sorted(p.name for p in folder.iterdir()) == ["transformer_stage_0.data", "transformer_stage_0.onnx"]
    staged = onnx.load(str(folder / "transformer_stage_0.onnx"), load_external_data=False)
    (location,) = {e.value for e in staged.graph.initializer[0].external_data if e.key == "location"}
    assert location == "transformer_stage_0.data"
    assert (folder / location).read_bytes() == (tmp_path / "transformer_stage_0.onnx_data").read_bytes()
    small = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph), str(small))
    assert aihub.upload_path(small) == small
    qai_hub_client = pytest.importorskip("qai_hub.client")
    assert qai_hub_client._determine_model_type(str(folder)) == qai_hub_client.SourceModelType.ONNX


def test_w8a16_jobs_need_the_quantised_graphs(tmp_path):
    from diffusers_neodragon.export.exporter import MANIFEST_FORMAT, write_manifest

    write_manifest(tmp_path, {"format": MANIFEST_FORMAT, "components": {
        "decoder_step": {"file": "decoder_step.onnx", "kind": "decoder_step", "inputs": {}, "outputs": {}}}})
    hub, _ = fake_hub()
    with pytest.raises(FileNotFoundError, match="w8a16"):
        aihub.submit_jobs(tmp_path, "Snapdragon X Elite CRD", "w8a16", hub=hub,
                          config_path=write_ini(tmp_path / "client.ini", "secret"))


def test_dry_run_of_the_tiny_pipelines_real_export(tiny_export, monkeypatch):
    """Every graph the exporter writes (real input names, shapes and dtypes, e.g. int32 token ids) passes qai-hub's
    own checks, with inference data in each graph's input order."""
    pytest.importorskip("qai_hub")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", "/nonexistent/client.ini")
    folder, manifest = tiny_export
    plan = aihub.submit_jobs(folder, "Snapdragon X Elite CRD", "fp16", dry_run=True)
    client = plan[0].job._owner
    assert sorted(job.name for job in plan if job.kind == "inference") == sorted(manifest["components"])
    compiled = {job.name: job for job in plan if job.kind == "compile"}
    for name, entry in manifest["components"].items():
        if entry["kind"] != "transformer_stage":
            shapes = dict(compiled[name].job.shapes)
            assert shapes == {k: (tuple(v["shape"]), v["dtype"]) for k, v in entry["inputs"].items()}
    uploads = [r.args[0] for r in client.requests if r.api == "create_and_upload_model"]
    assert sorted(uploads) == sorted(str(folder / entry["file"]) for entry in manifest["components"].values())


def test_cli_dry_run_needs_a_device(tmp_path, capsys):
    from diffusers_neodragon_cli import main

    code = main(["export", str(tmp_path / "model"), "--output", str(tmp_path / "out"), "--aihub-dry-run"])
    assert code == 2 and "name a device" in capsys.readouterr().err
