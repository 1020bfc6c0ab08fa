# Shared by deploy/start and deploy/test: install Debian/Ubuntu packages
# that are missing, as root or through sudo.
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
      echo "missing packages: ${missing[*]} (install them as root: apt-get install -y ${missing[*]})" >&2
      return 1
    fi
  fi
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Postfix is only wanted for smtp-sink: no mail system is configured.
  if [[ " ${missing[*]} " == *" postfix "* ]]; then
    echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  fi
  # The test servers (knotd, unbound) run per test on loopback: their
  # system services must not start on port 53 when the packages arrive.
  local policy=/usr/sbin/policy-rc.d added=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy" && added=1
  fi
  local rc=0
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  } || rc=$?
  [ -n "$added" ] && $SUDO rm -f "$policy"
  return $rc
}

# What building sealgate needs beside the Rust toolchain.
BUILD_PACKAGES=(pkg-config libssl-dev libclang-dev gcc)
# What the test suite needs: independent SMTP clients and servers (swaks
# needs Net::SSLeay for STARTTLS; it is only a recommendation of the package).
# postfix brings smtp-sink, a next hop we did not write.
# ca-certificates: a real public root for the private_ca check.
# knot (knotd), knot-dnsutils (kdig), bind9-utils (dnssec-signzone),
# bind9-dnsutils (delv) and unbound make the DNSSEC world we did not write.
# qpdf rewrites and encrypts the PDFs the PHI extraction tests read (a PDF
# writer we did not write).
TEST_PACKAGES=(swaks libnet-ssleay-perl python3 python3-aiosmtpd gnupg postfix ca-certificates openssl knot knot-dnsutils bind9-utils bind9-dnsutils unbound qpdf)
