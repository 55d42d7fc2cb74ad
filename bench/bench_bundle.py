"""Bundle benchmark: one person with a long chat history (1,000,000 records, about 1 GB of JSON).

    .venv/bin/python bench/bench_bundle.py                      # local store and S3 (SeaweedFS on :8333)
    .venv/bin/python bench/bench_bundle.py --records 100000 --stores local

1. Stages the records the way an export task does (discovery.bundle.staging, one JSON-lines file).
2. For each store, a fresh child process builds the bundle from staging and streams it into the
   store (local folder, or S3 multipart with AES256 through boto3): data/chat/messages.json plus
   the .csv beside it (the records are flat: the worst case, two compressed passes; --nested
   gives JSON only), index.html and manifest.json. The child reports wall time and its peak
   resident memory (ru_maxrss).
3. Baseline: `zip -6` of the staged JSON-lines file (the same records, one compression pass).
4. `dsar verify`'s check of the built bundle (reads and hashes every member).

Results go to bench/out/bundle.json; written up in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.base import Record  # noqa: E402

REQUEST_ID = "bench-bundle-0000-0000-000000000001"
WORDS = ("hei", "hello", "server", "invoice", "backup", "ssh", "key", "reboot", "disk", "full", "please", "thanks",
         "ticket", "upgrade", "plan", "green", "network", "latency", "oslo", "dns", "record", "mail", "bounce",
         "certificate", "renew", "firewall", "port", "open", "closed", "kernel", "panic", "snapshot", "restore",
         "Ødegård", "på", "vær", "så", "snill", "takk", "=SUM(A1)", "+47", "-rf", "@home")
S3 = {"endpoint_url": "http://127.0.0.1:8333", "access_key": "dsar-test-access", "secret_key": "dsar-test-secret-key"}


def chat_history(n: int, seed: int = 7, nested: bool = False) -> Iterator[Record]:
    """Chat messages of about 1 KB each as JSON: ids, times, who spoke, and the text (flat, or in a list)."""
    rnd = random.Random(seed)
    start = datetime(2019, 1, 1, tzinfo=UTC)
    conversation = str(uuid.UUID(int=rnd.getrandbits(128)))
    for i in range(n):
        if i % 200 == 0:
            conversation = str(uuid.UUID(int=rnd.getrandbits(128)))
        text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(110, 150)))
        yield Record("messages", str(i), {
            "id": str(uuid.UUID(int=rnd.getrandbits(128))), "conversation_id": conversation,
            "actor_type": "user" if i % 2 else "agent", "channel": "website",
            "created_time": (start + timedelta(seconds=97 * i)).isoformat(),
            **({"message_parts": [{"text": {"content": text}}]} if nested else {"text": text}),
        })


def stage(work: Path, records: int, nested: bool) -> dict[str, Any]:
    from discovery.bundle.staging import Staging

    staging = Staging(work / "staging")
    t0 = time.perf_counter()
    staged = staging.write(REQUEST_ID, "chat", chat_history(records, nested=nested))
    seconds = time.perf_counter() - t0
    path = staging.path(REQUEST_ID, "chat", staged["entities"]["messages"]["file"])
    return {"staged": staged, "seconds": seconds, "path": str(path), "bytes": path.stat().st_size}


def settings_for(store: str, work: Path, bucket: str) -> tuple[Any, dict[str, str]]:
    from discovery.engine.settings import load_settings

    env = {"DSAR_SECRET_KEY": "bench-secret-key-0123456789", "DSAR_LEDGER_URL": f"sqlite:///{work / 'l.db'}",
           "DSAR_ARCHIVE_PATH": str(work / "archive"), "DSAR_ARCHIVE_STAGING_PATH": str(work / "staging"),
           "DSAR_ARCHIVE_STORE": store}
    if store == "s3":
        env.update({"DSAR_ARCHIVE_BUCKET": bucket, "DSAR_ARCHIVE_ENDPOINT_URL": S3["endpoint_url"],
                    "DSAR_ARCHIVE_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": S3["access_key"],
                    "AWS_SECRET_ACCESS_KEY": S3["secret_key"]})
    return load_settings(None, env), env


def child(store: str, work: Path, bucket: str) -> None:
    """Build and store the bundle; print timings and peak memory as JSON (run in a fresh process)."""
    from discovery.bundle.archive import archive_store
    from discovery.bundle.build import BundleView, SystemPart, build_bundle, staged_size
    from discovery.bundle.staging import Staging

    staged = orjson.loads((work / "staged.json").read_bytes())
    settings, env = settings_for(store, work, bucket)
    staging = Staging(work / "staging")
    parts = [SystemPart("chat", "done", "export", staged=staged, finished_at=datetime.now(UTC).isoformat())]
    header = {"request": {"id": REQUEST_ID, "type": "access", "ticket": None, "received_at": "2024-05-01T00:00:00",
                          "due_at": "2024-05-31T00:00:00"},
              "subject": {"identifiers": []}, "generated_at": datetime.now(UTC).isoformat(),
              "plan": [{"system": "chat", "entity": "messages", "action": "export", "reason": "bench",
                        "task": "export"}]}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with archive_store(settings, env).writer(f"{REQUEST_ID}-{store}.zip",
                                              size_hint=staged_size(staging, REQUEST_ID, parts)) as out:
        built = build_bundle(out, header, parts, staging, BundleView())
    seconds = time.perf_counter() - t0
    print(orjson.dumps({"store": store, "seconds": seconds, "bundle_bytes": built.size, "uri": out.uri,
                        "sha256": built.sha256, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                        / 1024, "rss_after_imports_mb": rss_before / 1024}).decode())


def run_child(store: str, work: Path, bucket: str) -> dict[str, Any]:
    got = subprocess.run([sys.executable, __file__, "--child", store, "--work", str(work), "--bucket", bucket],
                         capture_output=True, text=True, timeout=3600)
    if got.returncode != 0:
        raise SystemExit(f"{store} build failed:\n{got.stderr}")
    return orjson.loads(got.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def zip_baseline(staged_file: Path, work: Path) -> dict[str, Any]:
    out = work / "baseline.zip"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run(["zip", "-6", "-q", "-j", str(out), str(staged_file)], check=True)
    return {"seconds": time.perf_counter() - t0, "zip_bytes": out.stat().st_size}


def verify_time(bundle: Path) -> dict[str, Any]:
    from discovery.bundle.verify import verify_bundle

    t0 = time.perf_counter()
    result = verify_bundle(bundle)
    return {"seconds": time.perf_counter() - t0, "ok": result.ok, "checked": result.checked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--stores", default="local,s3")
    ap.add_argument("--nested", action="store_true", help="records with a nested list: JSON only, no CSV")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "bundle")
    ap.add_argument("--bucket", default="dsar-bench-bundle")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.work, args.bucket)
        return

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    print(f"staging {args.records} records ...", file=sys.stderr)
    st = stage(args.work, args.records, args.nested)
    (args.work / "staged.json").write_bytes(orjson.dumps(st["staged"]))
    print(f"  {st['bytes'] / 1e6:.0f} MB JSON lines in {st['seconds']:.1f} s", file=sys.stderr)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "records": args.records, "nested": args.nested, "staged_bytes": st["bytes"],
        "stage_seconds": st["seconds"], "builds": [],
    }
    for store in args.stores.split(","):
        if store == "s3":
            import boto3

            s3 = boto3.client("s3", endpoint_url=S3["endpoint_url"], aws_access_key_id=S3["access_key"],
                              aws_secret_access_key=S3["secret_key"], region_name="us-east-1")
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket=args.bucket)
        print(f"building into the {store} store ...", file=sys.stderr)
        build = run_child(store, args.work, args.bucket)
        build["mb_per_s"] = st["bytes"] / 1e6 / build["seconds"]
        results["builds"].append(build)
        print(f"  {build['seconds']:.1f} s, {build['mb_per_s']:.1f} MB/s of JSON, bundle "
              f"{build['bundle_bytes'] / 1e6:.0f} MB, peak RSS {build['peak_rss_mb']:.0f} MB", file=sys.stderr)
        if store == "s3":
            key = build["uri"].split("/", 3)[3]
            s3.delete_object(Bucket=args.bucket, Key=key)
    print("zip -6 of the staged file ...", file=sys.stderr)
    base = zip_baseline(Path(st["path"]), args.work)
    base["mb_per_s"] = st["bytes"] / 1e6 / base["seconds"]
    results["zip_6"] = base
    print(f"  {base['seconds']:.1f} s, {base['mb_per_s']:.1f} MB/s, {base['zip_bytes'] / 1e6:.0f} MB", file=sys.stderr)
    local = next((b for b in results["builds"] if b["store"] == "local"), None)
    if local:
        results["verify"] = verify_time(Path(local["uri"].removeprefix("file://")))
        print(f"verify: {results['verify']['seconds']:.1f} s", file=sys.stderr)
    out = ROOT / "bench" / "out" / ("bundle-nested.json" if args.nested else "bundle.json")
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(out.read_text())
    shutil.rmtree(args.work, ignore_errors=True)  # staged records and bundles: gigabytes


if __name__ == "__main__":
    main()
