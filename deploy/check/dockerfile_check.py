#!/usr/bin/env python3
"""Check deploy/Dockerfile and .dockerignore against the rules of issue 6.

    dockerfile_check.py REPO_ROOT

No container engine is needed: the Dockerfile is read as text. Checks that
  * there is a build stage on a version-pinned rust:X.Y[.Z]-bookworm image, at
    least the crate's rust-version, that runs `cargo build --release --locked
    --no-default-features` (the proxy without `pgsplit demo` and the test
    cluster it would link);
  * the final stage is distroless (gcr.io/distroless/...:nonroot), runs no
    command (it has no shell), copies exactly one file, the release binary of
    the crate's [[bin]] from the build stage, sets a numeric non-root USER,
    EXPOSEs the client and admin ports and starts the binary in exec form;
  * .dockerignore keeps target/ and .git out of the context but not the
    sources, Cargo.toml, Cargo.lock or the manifests of the workspace members
    (cargo reads them even for a build that does not use them).
Exits 1 with one line per problem.
"""

import fnmatch
import json
import os
import re
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def instructions(text):
    """(line number, INSTRUCTION, arguments) with continuations joined."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def crate_facts(root):
    """(bin names, rust-version, workspace member directories)."""
    path = os.path.join(root, "Cargo.toml")
    with open(path, "rb") as f:
        raw = f.read()
    if tomllib:
        cargo = tomllib.loads(raw.decode())
        bins = [b.get("name") for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
        members = cargo.get("workspace", {}).get("members", [])
        return bins, cargo["package"].get("rust-version"), members
    text = raw.decode()
    bins = re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', text) or re.findall(r'^name\s*=\s*"([^"]+)"', text, re.M)[:1]
    rv = re.search(r'^rust-version\s*=\s*"([^"]+)"', text, re.M)
    m = re.search(r'^members\s*=\s*\[([^\]]*)\]', text, re.M)
    members = re.findall(r'"([^"]+)"', m.group(1)) if m else []
    return bins, rv.group(1) if rv else None, members


def version_tuple(v):
    return tuple(int(x) for x in v.split("."))


def main(argv):
    root = argv[1] if len(argv) > 1 else "."
    problems = []
    dockerfile = os.path.join(root, "deploy", "Dockerfile")
    with open(dockerfile, encoding="utf-8") as f:
        ins = instructions(f.read())
    bins, rust_version, members = crate_facts(root)

    stages = []  # [name, from-image, [instructions]]
    for n, word, args in ins:
        if word == "FROM":
            parts = [p for p in args.split() if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"line": n, "image": parts[0], "name": name, "ins": []})
        elif not stages:
            if word != "ARG":
                problems.append(f"line {n}: {word} before the first FROM")
        else:
            stages[-1]["ins"].append((n, word, args))
    if len(stages) < 2:
        problems.append("needs a multi-stage build (a build stage and a final stage)")
        return report(problems)

    *builders, final = stages
    build = None
    for st in builders:
        m = re.fullmatch(r"(?:docker\.io/(?:library/)?)?rust:(\d+\.\d+(?:\.\d+)?)-bookworm(@sha256:[0-9a-f]{64})?", st["image"])
        runs_build = any(
            word == "RUN" and re.search(r"\bcargo build\b", args)
            for _, word, args in st["ins"]
        )
        if not runs_build:
            continue
        build = st
        if not m:
            problems.append(f"line {st['line']}: build stage image {st['image']!r} is not a version-pinned rust:X.Y[.Z]-bookworm")
        elif rust_version and version_tuple(m.group(1))[:2] < version_tuple(rust_version)[:2]:
            problems.append(f"line {st['line']}: rust {m.group(1)} is older than the crate's rust-version {rust_version}")
        for n, word, args in st["ins"]:
            if word == "RUN" and re.search(r"\bcargo build\b", args):
                flags = args.split()
                for flag in ("--release", "--locked", "--no-default-features"):
                    if flag not in flags:
                        problems.append(f"line {n}: `cargo build` without {flag}")
                for flag in ("--features", "-F", "--all-features"):
                    if any(f == flag or f.startswith(flag + "=") for f in flags):
                        problems.append(f"line {n}: `cargo build` with {flag}: the image is the proxy alone")
    if build is None:
        problems.append("no build stage runs `cargo build`")
    elif not build["name"]:
        problems.append(f"line {build['line']}: name the build stage (FROM ... AS build) so the final stage can copy from it")

    if not re.fullmatch(r"gcr\.io/distroless/[a-z0-9-]+:(?:[a-z0-9.-]*-)?nonroot(@sha256:[0-9a-f]{64})?", final["image"]):
        problems.append(f"line {final['line']}: final image {final['image']!r} is not a distroless :nonroot image")
    words = [w for _, w, _ in final["ins"]]
    for bad in ("RUN", "ADD"):
        if bad in words:
            problems.append(f"final stage: {bad} is not allowed (distroless has no shell; copy only the binary)")
    copies = [(n, a) for n, w, a in final["ins"] if w == "COPY"]
    dest = None
    if len(copies) != 1:
        problems.append(f"final stage: expected exactly one COPY (the binary), found {len(copies)}")
    for n, args in copies:
        parts = args.split()
        flags = [p for p in parts if p.startswith("--")]
        paths = [p for p in parts if not p.startswith("--")]
        if build and f"--from={build['name']}" not in flags:
            problems.append(f"line {n}: COPY must take the binary --from={build['name']}")
        if len(paths) != 2:
            problems.append(f"line {n}: COPY must copy exactly one file")
            continue
        src, dest = paths
        if not any(re.fullmatch(rf".*/target/release/{re.escape(b)}", src) for b in bins):
            problems.append(f"line {n}: COPY source {src!r} is not target/release/<{'|'.join(bins)}>")
    users = [(n, a) for n, w, a in final["ins"] if w == "USER"]
    if not users:
        problems.append("final stage: no USER")
    else:
        n, user = users[-1]
        m = re.fullmatch(r"(\d+)(?::(\d+))?", user)
        if not m:
            problems.append(f"line {n}: USER {user!r} must be numeric (uid[:gid]) so runAsNonRoot can verify it")
        elif int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
            problems.append(f"line {n}: USER {user!r} is root")
    exposed = {p.split("/")[0] for _, w, a in final["ins"] if w == "EXPOSE" for p in a.split()}
    for port in ("6432", "9930"):
        if port not in exposed:
            problems.append(f"final stage: EXPOSE lacks {port}")
    entry = [(n, a) for n, w, a in final["ins"] if w == "ENTRYPOINT"]
    if not entry:
        problems.append("final stage: no ENTRYPOINT")
    else:
        n, args = entry[-1]
        try:
            argv0 = json.loads(args)
        except ValueError:
            argv0 = None
        if not isinstance(argv0, list) or not argv0:
            problems.append(f"line {n}: ENTRYPOINT must be in exec (JSON) form: there is no shell")
        elif dest and argv0[0] != dest:
            problems.append(f"line {n}: ENTRYPOINT runs {argv0[0]!r}, not the copied binary {dest!r}")

    ignore_path = os.path.join(root, ".dockerignore")
    if not os.path.isfile(ignore_path):
        problems.append(".dockerignore is missing")
    else:
        with open(ignore_path, encoding="utf-8") as f:
            patterns = [
                line.strip().lstrip("/")
                for line in f
                if line.strip() and not line.strip().startswith("#")
            ]

        def ignored(path):
            hit = False
            for p in patterns:
                neg = p.startswith("!")
                pat = p[1:].lstrip("/") if neg else p
                if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.rstrip("/") + "/*"):
                    hit = not neg
            return hit

        for must in ("target/release/pgsplit", ".git/HEAD"):
            if not ignored(must):
                problems.append(f".dockerignore does not exclude {must.split('/')[0]}/")
        keeps = ["Cargo.toml", "Cargo.lock", "src/main.rs"]
        keeps += [f"{m.rstrip('/')}/Cargo.toml" for m in members]
        for keep in keeps:
            if ignored(keep):
                problems.append(f".dockerignore excludes {keep}, which the build needs")
    return report(problems)


def report(problems):
    for p in problems:
        print(f"ERROR deploy/Dockerfile: {p}", file=sys.stderr)
    if not problems:
        print("  deploy/Dockerfile and .dockerignore: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
