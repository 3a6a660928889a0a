"""A real ComfyUI server for the integration tests (stdlib only; never imports ComfyUI in this process).

`ComfyServer(comfyui_path).start()` builds an isolated base directory

    BASE/custom_nodes/ComfyUI-DenseGRPO      -> symlink to this repository
    BASE/custom_nodes/densegrpo_test_nodes   -> symlink to tests/comfyui/test_nodes (test-only nodes)
    BASE/models/diffusion_models/tiny_sd3.safetensors          (ComfyUI's MMDiT, detected as SD3)
    BASE/models/vae_approx/taesd3_{encoder,decoder}.safetensors (VAELoader "taesd3")
    BASE/{input,output,temp,user}/

(the models are written by make_tiny_models.py, run with ComfyUI's python in a subprocess), then runs
`python main.py --cpu --listen 127.0.0.1 --port N --disable-auto-launch --base-directory BASE ...` with
OMP_NUM_THREADS=1 and HF_HUB_OFFLINE=1 until `/object_info` answers. `server.client` is the object the
`comfy` fixture yields.

Environment:
  COMFYUI_PATH             the ComfyUI checkout (unset: the tests skip)
  COMFYUI_PYTHON           its python (default $COMFYUI_PATH/.venv/bin/python, else this python)
  COMFYUI_EXTRA_ARGS       extra main.py arguments, split like a shell line (e.g. "--cache-none")
  COMFYUI_STARTUP_TIMEOUT  seconds to wait for the server (default 240)
  COMFYUI_KEEP_BASE=1      keep the base directory (with server.log) after the session

By hand: `python tests/comfyui/harness.py` starts a server and prints its URL and base directory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
PACK_DIR_NAME = "ComfyUI-DenseGRPO"
TEST_PACK_DIR_NAME = "densegrpo_test_nodes"
TINY_SD3 = "tiny_sd3.safetensors"
TINY_VAE = "taesd3"

# isolation flags, used when this ComfyUI's comfy/cli_args.py defines them (0.3.64 and 0.8.0 both do)
_ISOLATION_FLAGS = (
    "--base-directory",
    "--output-directory",
    "--input-directory",
    "--temp-directory",
    "--user-directory",
    "--database-url",
)


class ComfyError(RuntimeError):
    """A prompt that ComfyUI refused (validation) or that failed while executing; str() holds the node
    error text (node type, id, exception type and message)."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


class ComfyHTTPError(RuntimeError):
    def __init__(self, status, body, url):
        super().__init__(f"HTTP {status} from {url}: {body[:2000] if isinstance(body, str) else body!r}")
        self.status, self.body, self.url = status, body, url


def find_comfyui():
    """(path, None) for a usable $COMFYUI_PATH, else (None, reason to skip)."""
    path = os.environ.get("COMFYUI_PATH", "").strip()
    if not path:
        return None, "COMFYUI_PATH is not set (point it at a ComfyUI checkout to run the ComfyUI integration tests)"
    path = os.path.abspath(os.path.expanduser(path))
    if not all(os.path.exists(os.path.join(path, p)) for p in ("main.py", "nodes.py", "folder_paths.py", "comfy")):
        return None, f"COMFYUI_PATH={path} is not a ComfyUI checkout (no main.py, nodes.py, folder_paths.py, comfy/)"
    return path, None


def comfy_python(comfyui_path):
    explicit = os.environ.get("COMFYUI_PYTHON", "").strip()
    if explicit:
        return explicit
    venv = os.path.join(comfyui_path, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def run_lora_worker(tmp, spec: dict, timeout: int = 600) -> dict:
    """Run comfy_lora_worker.py with ComfyUI's python on SPEC (written to tmp/spec.json): its out.json."""
    path, reason = find_comfyui()
    if path is None:
        raise RuntimeError(reason)
    spec_path = os.path.join(str(tmp), "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    r = subprocess.run(
        [comfy_python(path), os.path.join(HERE, "comfy_lora_worker.py"), spec_path],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(spec["out"]) as f:
        return json.load(f)


def comfyui_version(comfyui_path):
    try:
        with open(os.path.join(comfyui_path, "comfyui_version.py")) as f:
            for line in f:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "unknown"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _format_validation_error(body):
    """The text of POST /prompt's 400 answer: {"error": {...}, "node_errors": {id: {"errors": [...]}}}."""
    if not isinstance(body, dict):
        return str(body)
    err = body.get("error") or {}
    lines = [
        f"prompt refused: {err.get('message', err) if isinstance(err, dict) else err}"
        + (f": {err.get('details')}" if isinstance(err, dict) and err.get("details") else "")
    ]
    for node_id, node in (body.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            lines.append(f"  node {node_id} ({node.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def _format_execution_error(messages):
    for event, data in messages or []:
        if event == "execution_error":
            return (
                f"{data.get('node_type')} (node {data.get('node_id')}) failed: "
                f"{data.get('exception_type')}: {data.get('exception_message')}"
            ), data
        if event == "execution_interrupted":
            return f"interrupted at {data.get('node_type')} (node {data.get('node_id')})", data
    return f"prompt failed without an execution_error message: {messages}", None


class ComfyClient:
    """What the `comfy` fixture yields: an HTTP client of one running ComfyUI plus its folders."""

    def __init__(self, server: "ComfyServer"):
        self._server = server
        self.url = server.url
        self.base_dir = server.base_dir
        self.output_dir = os.path.join(server.base_dir, "output")
        self.input_dir = os.path.join(server.base_dir, "input")
        self.models_dir = os.path.join(server.base_dir, "models")
        self.custom_nodes_dir = os.path.join(server.base_dir, "custom_nodes")
        self.comfyui_path = server.comfyui_path
        self.client_id = uuid.uuid4().hex
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy

    # ------------------------------------------------------------- raw HTTP
    def request(self, method, path, json_body=None, timeout=60):
        """(status, body): body parsed as JSON when the answer is JSON, else bytes. Never raises on 4xx/5xx."""
        data = None if json_body is None else json.dumps(json_body).encode("utf-8")
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                status, ctype, raw = resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as e:
            status, ctype, raw = e.code, e.headers.get("Content-Type", "") if e.headers else "", e.read()
        if "json" in ctype:
            try:
                return status, json.loads(raw.decode("utf-8"))
            except ValueError:
                pass
        return status, raw

    def get(self, path, timeout=60):
        status, body = self.request("GET", path, timeout=timeout)
        if status >= 400:
            raise ComfyHTTPError(
                status, body if not isinstance(body, bytes) else body.decode("utf-8", "replace"), self.url + path
            )
        return body

    def post(self, path, json=None, timeout=60):  # noqa: A002 - mirrors requests' keyword
        status, body = self.request("POST", path, json_body={} if json is None else json, timeout=timeout)
        if status >= 400:
            raise ComfyHTTPError(
                status, body if not isinstance(body, bytes) else body.decode("utf-8", "replace"), self.url + path
            )
        return body

    # ------------------------------------------------------------- ComfyUI API
    def object_info(self, node_class=None):
        return self.get("/object_info" + (f"/{node_class}" if node_class else ""))

    def queue(self, prompt: dict) -> str:
        """POST /prompt (API format: {node_id: {"class_type", "inputs"}}); returns the prompt id.
        Raises ComfyError with the node errors when ComfyUI refuses the prompt."""
        status, body = self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise ComfyError(_format_validation_error(body), body)
        return body["prompt_id"]

    def history(self, prompt_id):
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Poll /history until the prompt finished; returns its history entry ({"prompt", "outputs", "status"}).
        Raises ComfyError("<node type> (node <id>) failed: <exception type>: <message>") when it failed."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            entry = self.history(prompt_id)
            if entry and entry.get("status") is not None:
                status = entry["status"]
                if status.get("status_str") == "success" and status.get("completed", True):
                    return entry
                message, data = _format_execution_error(status.get("messages"))
                raise ComfyError(message, data)
            if not self._server.running():
                raise RuntimeError(f"ComfyUI exited while running prompt {prompt_id}\n{self._server.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout} s\n{self._server.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def outputs(self, entry: dict, node_id: str) -> dict:
        return entry.get("outputs", {}).get(node_id, {})

    def log(self) -> str:
        return self._server.log()


class ComfyServer:
    def __init__(self, comfyui_path, python=None, base_dir=None, extra_args=None, repo_root=REPO_ROOT):
        self.comfyui_path = os.path.abspath(comfyui_path)
        self.python = python or comfy_python(self.comfyui_path)
        self.repo_root = os.path.abspath(repo_root)
        self._own_base = base_dir is None
        self.base_dir = os.path.abspath(base_dir or tempfile.mkdtemp(prefix="densegrpo_comfyui_"))
        if extra_args is None:
            extra_args = shlex.split(os.environ.get("COMFYUI_EXTRA_ARGS", ""))
        self.extra_args = list(extra_args)
        self.log_path = os.path.join(self.base_dir, "server.log")
        self.proc = None
        self.port = None
        self.url = None
        self.client = None
        self.timings = {}

    # ------------------------------------------------------------- base directory
    def build_base_dir(self):
        t0 = time.monotonic()
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base_dir, sub), exist_ok=True)
        links = {PACK_DIR_NAME: self.repo_root, TEST_PACK_DIR_NAME: os.path.join(HERE, "test_nodes")}
        for name, target in links.items():
            link = os.path.join(self.base_dir, "custom_nodes", name)
            if not os.path.lexists(link):
                os.symlink(target, link, target_is_directory=True)
        models = os.path.join(self.base_dir, "models")
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        res = subprocess.run(
            [self.python, os.path.join(HERE, "make_tiny_models.py"), models],
            cwd=self.comfyui_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"make_tiny_models.py failed ({self.python}, cwd {self.comfyui_path}):\n"
                f"{res.stdout[-4000:]}\n{res.stderr[-8000:]}"
            )
        self.timings["models_s"] = time.monotonic() - t0

    def _supported(self, flag):
        try:
            with open(os.path.join(self.comfyui_path, "comfy", "cli_args.py")) as f:
                return f'"{flag}"' in f.read()
        except OSError:
            return False

    def command(self):
        b = self.base_dir
        values = {
            "--base-directory": b,
            "--output-directory": os.path.join(b, "output"),
            "--input-directory": os.path.join(b, "input"),
            "--temp-directory": b,  # ComfyUI appends "temp"
            "--user-directory": os.path.join(b, "user"),
            "--database-url": "sqlite:///:memory:",
        }
        cmd = [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
        ]
        for flag in _ISOLATION_FLAGS:
            if self._supported(flag):
                cmd += [flag, values[flag]]
        return cmd + self.extra_args

    # ------------------------------------------------------------- process
    def start(self, timeout=None):
        if not os.path.exists(self.python):
            raise RuntimeError(f"ComfyUI's python {self.python} does not exist (set COMFYUI_PYTHON)")
        timeout = float(timeout or os.environ.get("COMFYUI_STARTUP_TIMEOUT", 240))
        self.build_base_dir()
        t0 = time.monotonic()
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._log_file = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.comfyui_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.client = ComfyClient(self)
            if self._wait_until_up(timeout, t0):
                self.timings["startup_s"] = time.monotonic() - t0
                return self.client
            in_use = "address already in use" in self.log().lower()
            self.stop(remove=False)
            if not in_use:
                break
        raise RuntimeError(
            f"ComfyUI did not start within {timeout:.0f} s ({' '.join(self.command())}):\n{self.log_tail(12000)}"
        )

    def _wait_until_up(self, timeout, t0):
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                return False
            try:
                status, body = self.client.request("GET", "/object_info", timeout=30)
                if status == 200 and isinstance(body, dict) and body:
                    return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        return False

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, remove=True):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if getattr(self, "_log_file", None) is not None:
            self._log_file.close()
            self._log_file = None
        if remove and self._own_base and os.environ.get("COMFYUI_KEEP_BASE") != "1":
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, chars=6000):
        text = self.log()
        return f"--- ComfyUI log ({self.log_path}), last {min(chars, len(text))} chars ---\n{text[-chars:]}"


if __name__ == "__main__":
    path, reason = find_comfyui()
    if path is None:
        sys.exit(reason)
    server = ComfyServer(path)
    server.start()
    print(f"ComfyUI {comfyui_version(path)} at {server.url}\nbase dir {server.base_dir}\nCtrl-C stops it", flush=True)
    try:
        while server.running():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
