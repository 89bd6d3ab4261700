# jupyterhub_config.py: a JupyterHub whose users get container kernels. Each user's JupyterLab
# runs as that user (LocalProcessSpawner: the hub runs as root), from one Python environment that
# every user can run, with container-kernel in it; the kernels run as the user too, in the images
# their kernel specs name, and see neither the hub's tokens nor the user's real home. Set up, as
# root:
#
#   python3 -m venv /opt/jupyter
#   /opt/jupyter/bin/pip install jupyterhub jupyterlab container-kernel
#   npm install -g configurable-http-proxy
#   /opt/jupyter/bin/container-kernel install /images/my-image.sif --sys-prefix   # for everyone
#   /opt/jupyter/bin/jupyterhub -f jupyterhub_config.py
#
# Users add their own with `container-kernel install IMAGE` (from /opt/jupyter/bin).
# tests/test_jupyterhub.py runs this file as it is, adding only its ports, a test login and a
# temporary folder for the hub's state (tests/hub/testing_config.py).
import os

c = get_config()  # noqa: F821

# The users' environment: jupyterhub-singleuser, JupyterLab and container-kernel, whose
# provisioner every user's server imports. Not under root's home (0700): users run it.
user_env = os.environ.get("CONTAINER_KERNEL_USER_ENV", "/opt/jupyter")

c.JupyterHub.bind_url = "http://127.0.0.1:8000"  # behind your HTTPS reverse proxy
c.JupyterHub.spawner_class = "localprocess"  # each server runs as its user
c.Spawner.cmd = [f"{user_env}/bin/jupyterhub-singleuser"]
c.Spawner.ip = "127.0.0.1"
c.Spawner.default_url = "/lab"
# The servers' PATH: the provisioner looks there for the runtime (apptainer, singularity, ch-run).
c.Spawner.environment = {"PATH": f"{user_env}/bin:/usr/local/bin:/usr/bin:/bin"}
# Who logs in, with their Unix password (PAM, the default authenticator):
# c.Authenticator.allowed_users = {"alice", "bob"}  # or c.Authenticator.allow_all = True
