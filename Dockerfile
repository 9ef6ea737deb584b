# One image for every Python service of racelab (pods, workers, checker, schema job, Locust).
ARG PYTHON_VERSION=3.11.10-slim-bookworm
FROM python:${PYTHON_VERSION}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 racelab
WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt

# Then the source.
COPY services/ services/
COPY loadtests/ loadtests/
RUN pip install --no-deps .

USER 10001
EXPOSE 8000
CMD ["python", "-m", "racelab.pod", "--variant", "unguarded", "--port", "8000"]
