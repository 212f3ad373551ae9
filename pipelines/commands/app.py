"""Start the web app (Streamlit) on the bundled default model or a model directory of yours."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipelines.errors import UserError, bounded


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--port", type=bounded(int, at_least=1, below=65536), default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to share on the network)")
    p.add_argument("--max-upload-mb", type=bounded(int, at_least=1), default=50, help="largest accepted upload, in MB")
    p.add_argument("--models-dir", help="also offer every model directory inside DIR in the app's model picker")
    p.add_argument("--any-model-path", action="store_true",
                   help="let visitors type any server path as the model directory (off: on a shared host they could "
                   "probe the server's files)")


def command(args) -> list[str]:
    script = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
           "--server.port", str(args.port), "--server.address", args.host,
           "--server.maxUploadSize", str(args.max_upload_mb), "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "viewer"]  # a visitor sees no Deploy button or developer menu
    return cmd + (["--", "--model", str(args.model)] if args.model else [])


def run(args: argparse.Namespace) -> int:
    if args.model and not (Path(args.model) / "config.json").is_file():
        raise UserError(f"{args.model} is not a model directory (no config.json)")
    if args.models_dir and not Path(args.models_dir).is_dir():
        raise UserError(f"--models-dir {args.models_dir} is not a directory")
    os.environ["TXL_MAX_UPLOAD_MB"] = str(args.max_upload_mb)
    if args.models_dir:
        os.environ["TXL_MODELS_DIR"] = str(Path(args.models_dir).resolve())
    if args.any_model_path:
        os.environ["TXL_ANY_MODEL_PATH"] = "1"
    print(f"txl app: open http://{args.host}:{args.port} in a browser (Ctrl+C stops it)")
    os.execv(sys.executable, command(args))
