"""data.download against a local HTTP server on 127.0.0.1 with injected
faults: 404, a connection cut mid-file, a wrong digest, a stalled server.
Nothing outside the loopback address is contacted."""

import gzip
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import time

import numpy as np
import pytest

from softvq_jax.data import download
from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError


def idx_gz(array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
  return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def fake_mnist():
  """Tiny files in MNIST's IDX format, under the official names."""
  rng = np.random.default_rng(0)
  files = {}
  for split, n in (("train", 40), ("t10k", 20)):
    files[f"{split}-images-idx3-ubyte.gz"] = idx_gz(rng.integers(0, 256, (n, 28, 28)))
    files[f"{split}-labels-idx1-ubyte.gz"] = idx_gz(rng.integers(0, 10, (n,)))
  return files


def remote(name, content):
  return download.RemoteFile(name, len(content), hashlib.sha256(content).hexdigest())


class Server:
  """Serves ``files`` below /ok/ (with ranges), /cut/ (half, then the
  connection closes), /slow/ (stalls), /bad/ (other bytes of the same size)
  and /norange/ (ignores ranges); anything else is 404."""

  def __init__(self, files):
    self.files, self.ranges = files, []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        pass

      def do_GET(self):  # pylint: disable=invalid-name
        _, mode, name = self.path.split("/", 2)
        content = server.files.get(name)
        if content is None or mode not in ("ok", "cut", "slow", "bad", "norange"):
          self.send_error(404)
          return
        start = 0
        header = self.headers.get("Range")
        if header and mode == "ok":
          server.ranges.append(header)
          start = int(header.split("=")[1].rstrip("-"))
          self.send_response(206)
        else:
          self.send_response(200)
        body = content[start:]
        if mode == "bad":
          body = bytes(255 - b for b in body)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "slow":
          time.sleep(1.0)
        if mode == "cut":
          self.wfile.write(body[:len(body) // 2])
          self.wfile.flush()
          self.connection.close()
          return
        self.wfile.write(body)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = Server(fake_mnist())
  yield s
  s.close()


NAME = "train-images-idx3-ubyte.gz"


def test_download_lands_verified_and_whole(server, tmp_path):
  content = server.files[NAME]
  path = download.fetch(server.url + "/ok", remote(NAME, content), str(tmp_path))
  assert open(path, "rb").read() == content
  assert os.listdir(tmp_path) == [NAME]


def test_a_finished_download_is_not_fetched_again(server, tmp_path):
  (tmp_path / NAME).write_bytes(b"already here")
  path = download.fetch(server.url + "/missing", remote(NAME, server.files[NAME]),
                        str(tmp_path))
  assert open(path, "rb").read() == b"already here"


def test_404_is_one_line_and_writes_nothing(server, tmp_path):
  with pytest.raises(InputError, match="HTTP 404"):
    download.fetch(server.url + "/missing", remote(NAME, server.files[NAME]), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_a_cut_connection_keeps_a_part_file_that_a_rerun_resumes(server, tmp_path):
  content = server.files[NAME]
  with pytest.raises(InputError, match="rerunning the same command resumes"):
    download.fetch(server.url + "/cut", remote(NAME, content), str(tmp_path))
  assert os.listdir(tmp_path) == [NAME + download.PART_SUFFIX]  # Never the final name.
  kept = os.path.getsize(tmp_path / (NAME + download.PART_SUFFIX))
  assert 0 < kept < len(content)
  path = download.fetch(server.url + "/ok", remote(NAME, content), str(tmp_path))
  assert server.ranges == [f"bytes={kept}-"]
  assert open(path, "rb").read() == content
  assert os.listdir(tmp_path) == [NAME]


def test_a_server_that_ignores_ranges_restarts_the_file(server, tmp_path):
  content = server.files[NAME]
  (tmp_path / (NAME + download.PART_SUFFIX)).write_bytes(content[:100])
  path = download.fetch(server.url + "/norange", remote(NAME, content), str(tmp_path))
  assert open(path, "rb").read() == content


def test_a_wrong_digest_is_removed_never_renamed(server, tmp_path):
  with pytest.raises(InputError, match="is corrupt: sha256"):
    download.fetch(server.url + "/bad", remote(NAME, server.files[NAME]), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_a_stream_longer_than_the_official_file_is_cut_and_removed(server, tmp_path):
  content = server.files[NAME]
  short = download.RemoteFile(NAME, len(content) - 10, hashlib.sha256(content).hexdigest())
  with pytest.raises(InputError, match=r"sent more than the official \d+ bytes; .* nothing "
                     "was kept"):
    download.fetch(server.url + "/ok", short, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_a_planted_part_symlink_is_never_written_through(server, tmp_path):
  target = tmp_path / "victim"
  target.write_bytes(b"precious")
  os.symlink(target, tmp_path / (NAME + download.PART_SUFFIX))
  with pytest.raises(InputError, match="is a symlink"):
    download.fetch(server.url + "/ok", remote(NAME, server.files[NAME]), str(tmp_path))
  assert target.read_bytes() == b"precious"


def test_a_stalled_server_times_out(server, tmp_path):
  with pytest.raises(InputError, match="timed out"):
    download.fetch(server.url + "/slow", remote(NAME, server.files[NAME]), str(tmp_path),
                   timeout=0.2)
  assert NAME not in os.listdir(tmp_path)


def test_files_source_downloads_missing_mnist_and_loads_it(server, tmp_path, monkeypatch,
                                                          tiny_config):
  files = {name: remote(name, content) for name, content in server.files.items()}
  monkeypatch.setitem(input_pipeline.DOWNLOADS, "mnist",
                      ("https://unused.invalid/", tuple(files.values())))
  (tmp_path / NAME).write_bytes(server.files[NAME])  # Present files are not fetched.
  data = tiny_config.data
  data.name, data.source, data.dir = "mnist", "files", str(tmp_path / "")
  data.download, data.download_url, data.verify_md5 = True, server.url + "/ok/", False
  splits = input_pipeline.load(data)
  assert splits.train_images.shape == (40, 28, 28, 1) and len(splits.eval_labels) == 20
  assert sorted(os.listdir(tmp_path)) == sorted(server.files)


def test_cifar_tarball_yields_its_bin_files_only(tmp_path):
  records = np.random.default_rng(0).integers(0, 256, (3, input_pipeline.CIFAR_RECORD))
  records[:, 0] %= 10
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
    for name in ("data_batch_1.bin", "readme.html", "../escape.bin"):
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      payload = records.astype(np.uint8).tobytes()
      info.size = len(payload)
      archive.addfile(info, io.BytesIO(payload))
  tarball = tmp_path / "cifar-10-binary.tar.gz"
  tarball.write_bytes(buffer.getvalue())
  out = tmp_path / "out"
  out.mkdir()
  input_pipeline._extract_cifar(str(tarball), str(out))  # pylint: disable=protected-access
  assert sorted(os.listdir(out)) == [input_pipeline.CIFAR_SUMS, "data_batch_1.bin"]
  payload = records.astype(np.uint8).tobytes()
  assert (out / "data_batch_1.bin").read_bytes() == payload
  assert json.loads((out / input_pipeline.CIFAR_SUMS).read_text()) == {
      "data_batch_1.bin": hashlib.sha256(payload).hexdigest()}


def test_unprepared_tfds_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "tensorflow_available", lambda: False)
  with pytest.raises(InputError, match=r"pip install -e '.\[tfds\]', or use "
                     r"config.data.source=files with config.data.download=True"):
    input_pipeline._tfds("mnist", str(tmp_path))  # pylint: disable=protected-access
  assert not any(p.is_file() for p in tmp_path.rglob("*"))
