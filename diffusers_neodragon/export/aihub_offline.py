"""qai-hub's own client with the network replaced: the AI Hub job specification checked without an API token.

:class:`OfflineClient` is ``qai_hub.Client`` with one method replaced, ``_api_call``, the single door through which
qai-hub sends every request. Its ``submit_*`` methods therefore run unchanged up to the wire, with every check
qai-hub makes before an upload: the model type of each path (file extension; a folder holds exactly one ``.onnx``
and at most one ``.data``), the input specs (no empty dimension, dtypes qai-hub knows) and their wire form, the
inference data (``dict[str, list[np.ndarray]]`` of supported dtypes, one batch size) written to its h5 file, link
jobs taking only distinct QNN DLCs, compile-and-link graph names (one per model, unique), and the protobuf job
messages themselves. The requests are recorded in :attr:`OfflineClient.requests` instead of sent.

What needs the service stays unchecked: whether the device name exists (every name is answered as a device with
the QNN and ONNX frameworks) and whether the compile options are accepted.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Request:
    """One request the real client would have sent: the API function's name and its arguments."""

    api: str
    args: tuple
    kwargs: dict


def _import_client():
    try:
        import qai_hub
        from qai_hub import public_api_pb2 as api_pb
    except ImportError as error:
        raise ImportError("the offline AI Hub check needs qai-hub: pip install qai-hub") from error
    return qai_hub, api_pb


def offline_client(devices_attributes: tuple[str, ...] = ("framework:qnn", "framework:onnx")):
    """A ``qai_hub.Client`` that checks and records instead of sending (built lazily: qai-hub is optional)."""
    qai_hub, api_pb = _import_client()
    from google.protobuf.timestamp_pb2 import Timestamp

    class OfflineClient(qai_hub.Client):
        Device = qai_hub.Device  # so that the client stands in for the ``qai_hub`` module in submit_jobs

        def __init__(self):
            super().__init__(config=qai_hub.ClientConfig(api_token="offline", api_url="https://offline.invalid",
                                                         web_url="https://offline.invalid"))
            self.requests: list[Request] = []
            self._jobs: dict[str, Any] = {}
            self._ids = itertools.count()

        def _new_id(self, prefix: str) -> str:
            return f"{prefix}{next(self._ids)}"

        def _created(self, prefix: str):
            now = Timestamp()
            now.GetCurrentTime()
            return api_pb.CreateUpdateResponse(id=self._new_id(prefix), creation_time=now, expiration_time=now)

        def _api_call(self, api_func, *args, **kwargs):
            name = getattr(api_func, "__name__", str(api_func))
            self.requests.append(Request(name, args, kwargs))
            if name == "get_device_list":
                device_name, device_os = args[0], args[1]
                device = api_pb.Device(name=device_name, os=device_os)
                device.attributes.extend(devices_attributes)
                return api_pb.DeviceList(devices=[device], total_query_count=1)
            if name == "create_and_upload_model":
                path = args[0]
                if not os.path.exists(path):
                    raise FileNotFoundError(f"AI Hub upload: {path} does not exist")
                return self._created("m")
            if name == "create_and_upload_dataset":
                path = args[0]
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"AI Hub dataset upload: {path} does not exist")
                return self._created("d")
            if name in ("create_compile_job", "create_link_job", "create_inference_job"):
                response = self._created("j")
                message = args[0]
                kind = name[len("create_"):]
                stored = type(message)()
                stored.CopyFrom(message)
                setattr(stored, f"{kind}_id", response.id)
                if kind == "compile_job":
                    runtime = "qnn_dlc" if "--target_runtime qnn_dlc" in message.options else "qnn_context_binary"
                    model_type = (api_pb.ModelType.MODEL_TYPE_QNN_DLC if runtime == "qnn_dlc"
                                  else api_pb.ModelType.MODEL_TYPE_QNN_CONTEXT_BINARY)
                    stored.target_model.CopyFrom(api_pb.Model(model_id=self._new_id("m"), model_type=model_type,
                                                              name=f"{message.name}.{runtime}"))
                elif kind == "link_job":
                    stored.target_model.CopyFrom(api_pb.Model(
                        model_id=self._new_id("m"), model_type=api_pb.ModelType.MODEL_TYPE_QNN_CONTEXT_BINARY,
                        name=f"{message.name}.qnn_context_binary"))
                self._jobs[response.id] = api_pb.Job(**{kind: stored})
                return response
            if name == "get_job":
                return self._jobs[kwargs.get("job_id", args[0] if args else None)]
            raise NotImplementedError(f"the offline AI Hub client does not answer {name!r}")

        def submitted(self, api: str) -> list:
            """The job messages (protobufs) of the recorded requests to ``api``."""
            return [request.args[0] for request in self.requests if request.api == api]

    return OfflineClient()
