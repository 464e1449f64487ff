# apt-install.sh -- sourced by dev-cluster.sh, postgres.sh and sshd.sh (as root):
#   apt_install PACKAGE...   install those of Debian's PACKAGEs not installed yet
# without starting their services (a policy-rc.d that refuses, unless one is there: these
# scripts run the daemons themselves, with their own configuration). Returns apt-get's status.
apt_install() {
    local missing=() p added_policy=0 rc=0
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    ((${#missing[@]} > 0)) || return 0
    printf '[apt] installing %s\n' "${missing[*]}" >&2
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || rc=$?
    ((rc != 0)) || apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
    ((!added_policy)) || rm -f /usr/sbin/policy-rc.d
    return "$rc"
}
