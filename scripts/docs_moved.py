#!/usr/bin/env python3
"""Every claim of the README before the docs split is still somewhere.

The README was split into a short README and docs/ (issue 24). This
script takes the README as it was before the split (from git: the parent
of the commit that added docs/configuration.md, or --ref REV) and checks
that each of its paragraphs, list items, table rows and code lines still
appears, word for word, in README.md or a docs/*.md file of the working
tree. Words are compared, not formatting: link targets, punctuation,
emphasis and line breaks are ignored, so a reference such as
`see "Reload"` may become `see [Reload](operations.md#reload)`.

Headings are not checked (their levels and a few titles changed). A unit
that was reworded on purpose is listed in REWORDED with where it went;
anything else missing is printed and the exit status is 1.

    python3 scripts/docs_moved.py            # against the pre-split README
    python3 scripts/docs_moved.py --ref 3bbd5a2
"""

import argparse
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Units of the old README reworded on purpose: (start of the unit, why).
REWORDED = [
    ("| `src/proxy/` | request path",
     "the row gained the HTTP/2 backend pool (`upstream/multiplexed.rs`, issue 28) "
     "(docs/architecture.md, Module map)"),
    ("| `src/admin/` | admin API",
     "the row gained `guard.rs` and `backends.rs` and the pools/routes commands "
     "(issues 23 and 25; docs/architecture.md, Module map)"),
    ("Helpers live in `tests/support/`",
     "the list gained grpc.rs, redis_cluster.rs, webdriver.rs, and the lone test "
     "binaries are gone (issue 24 item 4; docs/architecture.md, Development)"),
    ("| `server.tls.certificates[].cert` / `.key` |",
     "split into one row per key so the docs test can find each key "
     "(docs/configuration.md, server section)"),
    ("For production, `cargo build --profile production`",
     "'(below)' became a link to benchmarks.md (docs/architecture.md, Build and test)"),
    ("| `tollgate clients list",
     "'(below)' became a link to admin-api.md (docs/operations.md, Command line)"),
    ("0. **Check.**",
     "'*Strict HTTP* below' became a link to security.md (docs/architecture.md)"),
    ("| 400 | malformed API key header",
     "'the strict HTTP rules above' became a link to security.md (docs/architecture.md)"),
    ("The 400, 414 and 431 above",
     "'above' became a link to the errors table (docs/security.md)"),
    ("| atomic check / take / refill |",
     "'(see below)' became a link (docs/architecture.md, The brief in Rust terms)"),
    ("| `ops` | `admin`, `openapi`,",
     "the test table gained the `docs` module (docs/architecture.md, Development)"),
    ("| `cli` | the commands |",
     "the module map row gained `probe` (docs/architecture.md, Module map)"),
    ("| `Dockerfile`, `docker-compose.yml`, `deploy/` |",
     "the layout row gained `.dockerignore` and what the files hold (docs/architecture.md, Layout)"),
    ("| `src/config.rs` |",
     "config.rs became src/config/ (issue 24 item 1; docs/architecture.md, Layout)"),
    ("2. `proxy::strict::check` refuses",
     "admission moved from proxy/mod.rs to proxy/admission.rs (issue 24 item 3): "
     "`proxy::Proxy::admit` is now `proxy::admission::Admission::admit`"),
    ("The image is multi-stage (built in `rust:1-bookworm`",
     "rewritten for issue 24 item 8: the certificate is made by the certs service, "
     "no longer by running scripts/dev-cert.sh first; every other claim is in "
     "docs/operations.md, Docker"),
]


def normalise(text):
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"[^0-9A-Za-z\u00c0-\uffff]+", " ", text)
    return " ".join(text.lower().split())


def units(markdown):
    """Paragraphs, list items, table rows and code lines, headings left out."""
    out, para, fenced = [], [], False

    def flush():
        if para:
            out.append("\n".join(para))
            para.clear()

    for line in markdown.splitlines():
        if line.startswith("```"):
            flush()
            fenced = not fenced
            continue
        if fenced:
            if line.strip():
                out.append(line)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            flush()
            continue
        if stripped.startswith("|") or re.match(r"^(- |\d+\. )", stripped):
            flush()
        para.append(line)
        if stripped.startswith("|"):
            flush()
    flush()
    return out


def old_readme(ref):
    if ref is None:
        added = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "--", "docs/configuration.md"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        ref = f"{added[-1]}^" if added else "HEAD"
    return ref, subprocess.run(["git", "show", f"{ref}:README.md"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="revision whose README.md is the old one")
    args = parser.parse_args()
    ref, old = old_readme(args.ref)
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    new = " | ".join(normalise(f.read_text()) for f in files)
    missing, reworded = [], 0
    all_units = units(old)
    for unit in all_units:
        if normalise(unit) in new:
            continue
        if any(unit.strip().startswith(start) for start, _ in REWORDED):
            reworded += 1
            continue
        missing.append(unit)
    print(f"README.md at {ref}: {len(all_units)} units, "
          f"{len(all_units) - len(missing) - reworded} found as they were, "
          f"{reworded} reworded on purpose, {len(missing)} missing")
    for unit in missing:
        print("--- missing:\n" + unit)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
