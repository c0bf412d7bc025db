"""The Open Inference Protocol over HTTP/REST (aiohttp), with Triton's binary tensor extension."""
