"""The web server of ``python -m tlbench serve`` (optional extra ``tlbench[serve]``: FastAPI, uvicorn,
python-multipart)."""
