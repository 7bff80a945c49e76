"""Packaging for paper_repro: every field comes from settings.ini (the nbdev 2 template, minus its deprecated version check)."""
import shlex
from configparser import ConfigParser

import setuptools

config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

expected = ("version description keywords author author_email lib_name user branch license status "
            "min_python audience language").split()
missing = [o for o in expected if o not in cfg]
assert not missing, f"settings.ini lacks: {missing}"

licenses = {
    "apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License"),
    "mit": ("MIT License", "OSI Approved :: MIT License"),
    "gpl2": ("GNU General Public License v2", "OSI Approved :: GNU General Public License v2 (GPLv2)"),
    "gpl3": ("GNU General Public License v3", "OSI Approved :: GNU General Public License v3 (GPLv3)"),
    "bsd3": ("BSD License", "OSI Approved :: BSD License"),
}
statuses = ["0 - Pre-Planning", "1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta",
            "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
py_versions = "3.9 3.10 3.11 3.12 3.13 3.14".split()

lic = licenses.get(cfg["license"].lower(), (cfg["license"], None))
min_python = cfg["min_python"]
requirements = shlex.split(cfg.get("requirements", ""))
if cfg.get("pip_requirements"):
    requirements += shlex.split(cfg.get("pip_requirements", ""))
dev_requirements = shlex.split(cfg.get("dev_requirements", ""))
extras = {"dev": dev_requirements, "submitit": shlex.split(cfg.get("submitit_requirements", "")),
          "ray": shlex.split(cfg.get("ray_requirements", ""))}
console_scripts = cfg.get("console_scripts", "").split()

setuptools.setup(
    name=cfg["lib_name"],
    license=lic[0],
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"].title(),
        "Natural Language :: " + cfg["language"].title(),
    ]
    + ["Programming Language :: Python :: " + v for v in py_versions[py_versions.index(min_python):]]
    + (["License :: " + lic[1]] if lic[1] else []),
    url=cfg["git_url"],
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    install_requires=requirements,
    extras_require=extras,
    dependency_links=cfg.get("dep_links", "").split(),
    python_requires=">=" + min_python,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    zip_safe=False,
    entry_points={
        "console_scripts": console_scripts,
        "nbdev": [f"{cfg.get('lib_path')}={cfg.get('lib_path')}._modidx:d"],
    },
    version=cfg["version"],
    description=cfg["description"],
    keywords=cfg["keywords"],
    author=cfg["author"],
    author_email=cfg["author_email"],
)
