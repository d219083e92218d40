"""A real `kiln serve` for pytest: started on a free port, waited for until /health
answers 200, stopped (terminate, then kill) at teardown. Shared by the server tests."""
import http.client
import json
import pathlib
import re
import subprocess
import time


def serve(kiln_bin, model, tmp_path_factory, *extra, parallel=4):
    """The body of a module fixture: `yield from serve(...)` gives the test module one
    server (aliased "smol") and stops it after the module."""
    s = KilnServer(kiln_bin, model, tmp_path_factory.mktemp("serve"), "--alias", "smol", *extra,
                   parallel=parallel)
    try:
        yield s
    finally:
        s.stop()


class KilnServer:
    def __init__(self, kiln_bin, model, tmp_path, *extra, parallel=4):
        self.log_path = pathlib.Path(tmp_path) / "serve.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(kiln_bin), "serve", "-m", str(model), "--port", "0", "-c", "1024",
             "--parallel", str(parallel), "-t", "2", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self.port = self._wait_for_port()
            self.base = f"http://127.0.0.1:{self.port}"
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_for_port(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log_path.read_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError("kiln serve exited:\n" + self.log_path.read_text())
            time.sleep(0.05)
        raise RuntimeError("kiln serve did not start listening")

    def _wait_ready(self):
        deadline = time.time() + 60
        while time.time() < deadline:
            status, _ = self.request("GET", "/health")
            if status == 200:
                return
            assert status == 503  # still loading
            if self.proc.poll() is not None:
                raise RuntimeError("kiln serve exited:\n" + self.log_path.read_text())
            time.sleep(0.05)
        raise RuntimeError("kiln serve did not become ready")

    def request(self, method, path, body=None, headers=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        return resp.status, payload

    def json(self, method, path, body=None, **kw):
        status, payload = self.request(method, path, body, **kw)
        return status, json.loads(payload)

    def metrics(self):
        _, payload = self.request("GET", "/metrics")
        values = {}
        for line in payload.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
