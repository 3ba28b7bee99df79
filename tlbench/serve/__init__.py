"""The web server of ``tlbench serve`` (optional extra ``tlbench[serve]``: FastAPI, uvicorn,
python-multipart)."""
