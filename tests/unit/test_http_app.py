"""ResultsHttpServer over real sockets: read-only, confined, bounded, 4xx on malformed requests."""
from __future__ import annotations

import http.client
import json
import os
import time
from urllib.parse import quote

import h5py
import numpy as np
import pytest

from tango_dqm.http import HttpServerError, ResultsHttpServer
from tango_dqm.http.hsds import object_id, root_id
from tests.helpers import free_port


def request(server: ResultsHttpServer, method: str, target: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with the target sent exactly as given (no client-side path normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body or b"")
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(server: ResultsHttpServer, target: str) -> tuple[int, dict]:
    status, _, body = request(server, "GET", target)
    return status, json.loads(body)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    scan = root / "scan_1.h5"
    with h5py.File(scan, "w") as f:
        f.create_dataset("entry/results/frame_id", data=np.arange(100, dtype=np.int64), maxshape=(None,),
                         chunks=(16,))
        f.create_dataset("entry/results/image", data=np.arange(1000 * 300, dtype=np.float64).reshape(1000, 300))
        f["entry"].attrs["NX_class"] = "NXentry"
    (root / "index.html").write_text("<html>run list</html>")
    (root / "runs.csv").write_text("scan_id,frames\nscan_1,100\n")
    (root / "scan_1_plots").mkdir()
    (root / "scan_1_plots" / "trend.png").write_bytes(b"\x89PNG fake")
    (root / ".scan_1.h5.writer").write_text("")
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret")
    (tmp_path / "outside.h5").write_bytes(scan.read_bytes())
    os.symlink(outside, root / "link_out.txt")
    os.symlink(tmp_path / "outside.h5", root / "link_out.h5")
    server = ResultsHttpServer("127.0.0.1", 0, root, lambda: scan, max_bytes=1 << 20)
    server.start()
    yield server, root
    server.close()


def ids(domain: str = "/"):
    return {"root": root_id(domain), "frame_id": object_id(domain, "d", "/entry/results/frame_id"),
            "image": object_id(domain, "d", "/entry/results/image")}


def test_domain_groups_datasets_and_values(served):
    server, _ = served
    status, about = get_json(server, "/about")
    assert status == 200 and about["state"] == "READY"
    status, dom = get_json(server, "/?domain=/")
    assert status == 200 and dom["root"] == ids()["root"]
    status, root = get_json(server, f"/groups/{dom['root']}?domain=/&include_links=1&include_attrs=1")
    assert status == 200 and root["links"]["entry"]["class"] == "H5L_TYPE_HARD"
    status, ds = get_json(server, f"/datasets/{ids()['frame_id']}?domain=/")
    assert status == 200 and ds["shape"] == {"class": "H5S_SIMPLE", "dims": [100], "maxdims": [0]}
    assert ds["type"]["base"] == "H5T_STD_I64LE"
    status, headers, body = request(server, "GET", f"/datasets/{ids()['frame_id']}/value?domain=/&select=[10:20:2]",
                                    headers={"Accept": "application/octet-stream"})
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert np.frombuffer(body, "<i8").tolist() == [10, 12, 14, 16, 18]
    status, value = get_json(server, f"/datasets/{ids()['frame_id']}/value?domain=/&select=[[3,5,99]]")
    assert status == 200 and value["value"] == [3, 5, 99]
    status, links = get_json(server, f"/groups/{dom['root']}/links?domain=/")
    assert status == 200 and [x["title"] for x in links["links"]] == ["entry"]
    entry = links["links"][0]["id"]
    status, attr = get_json(server, f"/groups/{entry}/attributes/NX_class?domain=/")
    assert status == 200 and attr["value"] == "NXentry"
    # the same file by name: its own ids, the same values
    status, dom2 = get_json(server, "/?domain=/scan_1.h5")
    assert status == 200 and dom2["root"] == root_id("/scan_1.h5") != dom["root"]
    # POST is a read here (HSDS: long select or points), and returns the same values
    points = np.array([[7], [8]], dtype="<u8").tobytes()
    status, _, body = request(server, "POST", f"/datasets/{ids()['frame_id']}/value?domain=/", points,
                              {"Content-Type": "application/octet-stream", "Accept": "application/octet-stream"})
    assert status == 200 and np.frombuffer(body, "<i8").tolist() == [7, 8]


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
def test_every_write_method_is_refused(served, method):
    server, root = served
    targets = ["/", "/?domain=/", f"/groups/{ids()['root']}?domain=/", f"/groups/{ids()['root']}/links/x?domain=/",
               f"/datasets/{ids()['frame_id']}?domain=/", f"/datasets/{ids()['frame_id']}/attributes/a?domain=/",
               "/runs/index.html", "/runs/new.html"]
    if method != "POST":
        targets.append(f"/datasets/{ids()['frame_id']}/value?domain=/")
    for target in targets:
        status, headers, body = request(server, method, target, b'{"x": 1}', {"Content-Type": "application/json"})
        assert status == 405, (method, target, status)
        assert "read-only" in json.loads(body)["error"] and "GET" in headers["allow"]
    assert not (root / "new.html").exists()
    with h5py.File(root / "scan_1.h5", "r") as f:
        assert list(f) == ["entry"]


TRAVERSALS = [
    "/runs/../secret.txt", "/runs/%2e%2e/secret.txt", "/runs/..%2fsecret.txt", "/runs/%2e%2e%2fsecret.txt",
    "/runs//etc/passwd", "/runs/%2fetc%2fpasswd", "/runs/link_out.txt", "/runs/.scan_1.h5.writer",
    "/runs/scan_1_plots/../../secret.txt", "/runs/scan_1.h5", "/runs/%00", "/runs/....//secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_run_pages_are_confined(served, target):
    server, _ = served
    status, _, body = request(server, "GET", target)
    assert status in (400, 403, 404), (target, status)
    assert b"top secret" not in body and b"root:" not in body


@pytest.mark.parametrize("domain", ["/../outside.h5", "/%2e%2e/outside.h5", "/link_out.h5", "/etc/passwd",
                                    "//etc/passwd", "/.scan_1.h5.writer", "relative.h5", "/index.html",
                                    "/scan_1.h5/../../outside.h5", "/\x00"])
def test_domains_are_confined(served, domain):
    server, _ = served
    status, _, _ = request(server, "GET", f"/?domain={quote(domain, safe='')}")
    assert status in (400, 403, 404), (domain, status)
    status, _, _ = request(server, "GET", f"/groups/{root_id(domain)}?domain={quote(domain, safe='')}")
    assert status in (400, 403, 404)


def test_run_pages_are_served(served):
    server, _ = served
    status, headers, body = request(server, "GET", "/runs/")
    assert status == 200 and body == b"<html>run list</html>" and headers["content-type"].startswith("text/html")
    assert request(server, "GET", "/runs/runs.csv")[2].startswith(b"scan_id,frames")
    status, headers, body = request(server, "GET", "/runs/scan_1_plots/trend.png")
    assert status == 200 and headers["content-type"] == "image/png"
    assert request(server, "GET", "/runs")[0] == 307
    assert request(server, "HEAD", "/runs/index.html")[0] == 200
    status, headers, _ = request(server, "GET", "/", headers={"Accept": "text/html"})  # a browser at the root
    assert status == 307 and headers["location"] == "/runs/"


def test_large_selection_refused_with_413(served):
    server, _ = served
    image = ids()["image"]  # 1000 x 300 float64 = 2.4 MB, limit 1 MiB
    status, _, body = request(server, "GET", f"/datasets/{image}/value?domain=/",
                                    headers={"Accept": "application/octet-stream"})
    assert status == 413 and "limit of 1048576 bytes" in json.loads(body)["error"]
    status, _, body = request(server, "GET", f"/datasets/{image}/value?domain=/&select=[0:100,0:300]",
                                    headers={"Accept": "application/octet-stream"})
    assert status == 200 and len(body) == 100 * 300 * 8
    assert np.frombuffer(body, "<f8")[301] == 301.0
    status, _, _ = request(server, "GET", f"/datasets/{image}/value?domain=/&select=[0:100,0:300]")  # as JSON
    assert status == 413


MALFORMED = ["[0:10", "0:10", "[a:b]", "[0:10:0]", "[5:2]", "[0:1000]", "[0:10,0:10]", "[[3,1]]", "[[]]",
             "[[1,[2]]]", "[-1:5]", "[1e3]", "[" + "9" * 40 + "]", "[0:10:1:1]", "[]]", "[" * 5000, "[%00]"]


@pytest.mark.parametrize("select", MALFORMED)
def test_malformed_select_is_4xx_and_server_survives(served, select):
    server, _ = served
    status, _, body = request(server, "GET",
                              f"/datasets/{ids()['frame_id']}/value?domain=/&select={quote(select, safe='')}")
    assert 400 <= status < 500, (select, status)
    assert "select" in json.loads(body)["error"]
    assert get_json(server, "/about")[0] == 200


@pytest.mark.parametrize("target", [
    "/groups/g-123?domain=/", "/groups/not-an-id?domain=/", f"/groups/{ids()['frame_id']}?domain=/",
    f"/datasets/{ids()['root']}?domain=/", f"/datasets/{object_id('/', 'd', '/nope')}?domain=/",
    f"/groups/{ids()['root']}", "/?domain=", "/?domain=" + "a" * 5000, "/nonexistent",
    f"/datasets/{ids()['frame_id']}/value?domain=/&select=[0:2]&x=%ff%fe",
    f"/groups/{ids()['root']}/links/nothere?domain=/", f"/groups/{ids()['root']}/attributes/nothere?domain=/",
])
def test_malformed_requests_are_4xx(served, target):
    server, _ = served
    status, _, _ = request(server, "GET", target)
    assert 400 <= status < 500 or (status == 200 and "x=%ff" in target), (target, status)
    assert get_json(server, "/about")[0] == 200


def test_malformed_post_bodies_are_4xx(served):
    server, _ = served
    url = f"/datasets/{ids()['frame_id']}/value?domain=/"
    for body, ctype in [(b"not json", "application/json"), (b'["x"]', "application/json"),
                        (b'{"select": 5}', "application/json"), (b"\x01\x02\x03", "application/octet-stream"),
                        (np.array([[1000]], "<u8").tobytes(), "application/octet-stream"),
                        (b"", "application/octet-stream")]:
        status, _, _ = request(server, "POST", url, body, {"Content-Type": ctype})
        assert 400 <= status < 500, (body, status)
    status, _, _ = request(server, "POST", url, b"x" * (40 * 1024 * 1024), {"Content-Type": "application/json"})
    assert status == 413


def test_growing_file_seen_on_next_request(tmp_path):
    """A SWMR writer in this process: each request sees its last flush, and the writer can re-open r+."""
    path = tmp_path / "live.h5"
    w = h5py.File(path, "w", libver="latest")
    ds = w.create_dataset("entry/results/frame_id", shape=(0,), maxshape=(None,), chunks=(64,), dtype=np.int64)
    w.swmr_mode = True
    with ResultsHttpServer("127.0.0.1", 0, tmp_path, lambda: path) as server:
        fid = object_id("/", "d", "/entry/results/frame_id")
        for n in (3, 10):
            ds.resize((n,))
            ds[:] = np.arange(n)
            w.flush()
            # seen at once, or within the response cache's age bound (a write in the same mtime tick)
            doc = wait_json(server, f"/datasets/{fid}?domain=/", lambda d, n=n: d["shape"]["dims"] == [n])
            assert doc["shape"]["dims"] == [n]
            assert wait_json(server, f"/datasets/{fid}/value?domain=/",
                             lambda d, n=n: d["value"] == list(range(n)))["value"] == list(range(n))
        w.close()
        with h5py.File(path, "r+") as again:  # as ScanWriter.finish does: not blocked by the server
            again["entry"].create_dataset("end_time", data="now")
        assert get_json(server, "/?domain=/")[0] == 200


def wait_json(server: ResultsHttpServer, target: str, done, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, doc = get_json(server, target)
        if status == 200 and done(doc):
            return doc
        if time.monotonic() > deadline:
            return doc
        time.sleep(0.02)


def test_responses_are_reused_only_while_the_file_is_unchanged(served):
    server, root = served
    state = server.app.app.state.results
    target = f"/datasets/{ids()['frame_id']}/value?domain=/&select=[0:3]"
    first = get_json(server, target)[1]
    hits = state.cache_hits
    assert get_json(server, target)[1] == first and state.cache_hits == hits + 1
    with h5py.File(root / "scan_1.h5", "r+") as f:  # the file changes: the next answer is new
        f["entry/results/frame_id"][0:3] = [7, 7, 7]
    assert wait_json(server, target, lambda d: d["value"] == [7, 7, 7])["value"] == [7, 7, 7]


def test_close_is_quick_with_an_idle_keepalive_client(tmp_path):
    server = ResultsHttpServer("127.0.0.1", 0, tmp_path, lambda: None)
    server.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/about")
    assert conn.getresponse().read()  # connection kept alive
    t = time.monotonic()
    server.close()
    assert time.monotonic() - t < 2.0
    assert not server.running
    server.close()  # idempotent
    conn.close()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=2).request("GET", "/about")


def test_port_in_use_is_a_clear_error(tmp_path):
    port = free_port()
    with ResultsHttpServer("127.0.0.1", port, tmp_path, lambda: None), \
            pytest.raises(HttpServerError, match=f"cannot listen on 127.0.0.1:{port}"):
        ResultsHttpServer("127.0.0.1", port, tmp_path, lambda: None).start()
    with pytest.raises(HttpServerError, match="0..65535"):
        ResultsHttpServer("127.0.0.1", 70000, tmp_path, lambda: None)


def test_output_directory_inside_a_hidden_folder_is_served(tmp_path):
    root = tmp_path / ".dqm" / "out"
    root.mkdir(parents=True)
    scan = root / "scan_2.h5"
    with h5py.File(scan, "w") as f:
        f["x"] = np.arange(4)
    (root / "index.html").write_text("runs")
    with ResultsHttpServer("127.0.0.1", 0, root, lambda: scan) as server:
        assert get_json(server, "/?domain=/")[0] == 200
        assert get_json(server, f"/datasets/{object_id('/', 'd', '/x')}/value?domain=/")[1]["value"] == [0, 1, 2, 3]
        assert request(server, "GET", "/runs/")[2] == b"runs"


def test_external_links_and_virtual_datasets_read_nothing_outside(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    with h5py.File(tmp_path / "outside.h5", "w") as f:
        f["secret"] = np.arange(5) + 1000
    with h5py.File(root / "scan_3.h5", "w") as f:
        f["ext"] = h5py.ExternalLink(str(tmp_path / "outside.h5"), "/secret")
        layout = h5py.VirtualLayout(shape=(5,), dtype=np.int64)
        layout[:] = h5py.VirtualSource(str(tmp_path / "outside.h5"), "secret", shape=(5,))
        f.create_virtual_dataset("vds", layout)
    with ResultsHttpServer("127.0.0.1", 0, root, lambda: None) as server:
        status, root_doc = get_json(server, f"/groups/{root_id('/scan_3.h5')}?domain=/scan_3.h5&include_links=1")
        assert status == 200
        ext = root_doc["links"]["ext"]
        assert ext["class"] == "H5L_TYPE_EXTERNAL" and "id" not in ext  # listed, never followed
        status, _, body = request(server, "GET", f"/datasets/{object_id('/scan_3.h5', 'd', '/vds')}/value"
                                                 "?domain=/scan_3.h5")
        assert status == 403 and b"virtual" in body and b"1000" not in body


def test_random_selects_are_parsed_or_refused_with_4xx():
    from tango_dqm.http.hsds import HttpError, parse_select

    rng = np.random.default_rng(5)
    alphabet = list("[]:,0123456789- ")
    shape = (40, 7)
    data = np.arange(280).reshape(shape)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 16))))
        try:
            index, out_shape = parse_select(text, shape)
        except HttpError as exc:
            assert 400 <= exc.status < 500, text
            continue
        picked = data[index] if index else data
        assert picked.size == int(np.prod(out_shape)), text  # what would be read matches the declared size
