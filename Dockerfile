FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/surgflow
COPY pyproject.toml README.md ./
COPY surgflow ./surgflow
COPY flows ./flows
COPY recipes ./recipes
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" && pip install --no-cache-dir -e .
ENV SURGFLOW_HOME=/srv/surgflow
ENTRYPOINT []
