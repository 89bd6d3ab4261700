# What tests/test_jupyterhub.py adds to the site's jupyterhub_config.py (loaded as it is): free
# ports on 127.0.0.1, one user who logs in through the login page with a password (no PAM), and
# the hub's state (database, cookie secret, proxy pid file) in its working folder, a temporary one.
import os

c = get_config()  # noqa: F821
site_config = os.path.join(os.path.dirname(__file__), "jupyterhub_config.py")
assert os.path.isfile(site_config), site_config  # load_subconfig passes over a missing file
load_subconfig(site_config)  # noqa: F821

c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['CK_HUB_PORT']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{os.environ['CK_HUB_API_PORT']}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['CK_HUB_PROXY_API_PORT']}"
c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "jupyterhub_cookie_secret"
c.JupyterHub.authenticator_class = "shared-password"  # JupyterHub >= 5.3
c.SharedPasswordAuthenticator.user_password = os.environ["CK_HUB_PASSWORD"]
c.Authenticator.allowed_users = {os.environ["CK_HUB_USER"]}
