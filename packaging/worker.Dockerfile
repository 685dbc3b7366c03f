# Compute workers as a container image, for facility servers and clusters.
#   packaging/build-wheel                       # makes dist/ilastik_desktop-<version>-py3-none-any.whl
#   docker build -f packaging/worker.Dockerfile -t ilastik-worker .
#   docker run -p 5556:5556 -v $PWD/worker-config:/config ilastik-worker --gateway-key 'GATEWAY-KEY'
# The worker listens on port 5556 (CurveZMQ); its key pair is created in the mounted /config on first
# start (docker run --entrypoint ilastik-worker ilastik-worker --config-dir /config --print-key shows the
# public key), trusted gateways come from --gateway-key or
# /config/authorized_gateways. packaging/test-worker-image runs these commands in a clean virtualenv.
FROM python:3.11-slim
RUN useradd --create-home --uid 1000 worker && mkdir /config && chown worker /config
COPY dist/ilastik_desktop-*-py3-none-any.whl /tmp/
RUN pip install --no-cache-dir /tmp/ilastik_desktop-*-py3-none-any.whl && rm /tmp/ilastik_desktop-*.whl
USER worker
VOLUME /config
EXPOSE 5556
ENTRYPOINT ["ilastik-worker", "--config-dir", "/config", "--listen", "tcp://*:5556"]
