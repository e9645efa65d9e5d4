"""Packaging for pvc-orchestrator: a Celery/ZooKeeper orchestrator for small KVM clusters."""

from setuptools import find_packages, setup

setup(
    name="pvc-orchestrator",
    version="0.1.0",
    description="Celery task orchestrator for small KVM clusters in the style of PVC",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["zk_schema*", "pvc_tasks*", "pvc_workers*", "pvc_web*", "pvc_cli*", "pvc_dev*"]),
    package_data={"zk_schema": ["versions/*.json"], "pvc_dev": ["nodes/*.xml", "vms/*.xml"],
                  "pvc_web": ["static/*"]},
    install_requires=[
        "celery[redis]>=5.4,<6",
        "kombu>=5.4,<6",
        "redis>=5",
        "kazoo>=2.10,<3",
        "flask>=3,<4",
        "flask-smorest>=0.45,<0.48",
        "marshmallow>=3.20,<5",
        "click>=8.1,<9",
        "flower>=2,<3",
        "requests>=2.31,<3",
        "waitress>=3,<4",
        "libvirt-python>=9",
        # libvirt's own RELAX NG schema of domain XML, compiled once per process (pvc_tasks.domain_xml).
        "lxml>=5",
        "cryptography>=41",
        "prometheus-client>=0.20,<1",
        # Swagger UI 4.15.5's files, served by the API itself (pvc_web.pages): pinned, no CDN.
        "swagger-ui-bundle==1.1.0",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2", "pytest-xdist>=3", "ruff>=0.6", "pyyaml>=6",
                 # The status page and Swagger UI in a real headless Chromium (Debian's chromium-driver).
                 "selenium>=4.20,<5"],
    },
    entry_points={
        "console_scripts": [
            "pvc=pvc_cli.main:cli",
            "pvc-worker=pvc_workers.daemon:main",
            "pvc-api=pvc_web.server:main",
            "pvc-flower=pvc_web.flower:main",
            "pvc-dev=pvc_dev.cli:main",
        ]
    },
)
