"""VM XML that reaches for the host, and XML that must still pass: the table shared by the unit tests of the policy
(tests/unit/test_xml_policy.py) and the API and worker tests (tests/integration/test_xml_boundary.py).

Each case is (id, parts, outcome, needle): ``parts`` fill the template below; ``outcome`` is ``refused`` (400
``xml_not_allowed``), ``invalid`` (400 ``invalid_request``: libvirt's schema or parser refuses the text) or
``allowed``; ``needle`` is a piece of the answer's details (the element, or the reason) for the first two.
The first block is the security review's findings, each of which passed the policy before it was rewritten.
"""

from __future__ import annotations

POLICY_SETTINGS = {"vf_names": frozenset({"ens1f0v1", "ens1f0v2"}), "vf_addresses": frozenset({(0, 0x3C, 0, 1)}),
                   "allowed_bridges": ("vmbr0",)}

OWN = "/var/lib/libvirt/images/{vm}"


def document(vm: str, os: str = "", top: str = "", devices: str = "", attrs: str = "") -> str:
    return (f"<domain type='test'{attrs}><name>{vm}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64'>hvm</type>{os}</os>{top}<devices>{devices}</devices></domain>")


def disk(source: str, kind: str = "file", extra: str = "", device: str = "disk") -> str:
    return f"<disk type='{kind}' device='{device}'><source {source}/><target dev='vda'/>{extra}</disk>"


CASES: list[tuple[str, dict, str, str]] = [
    # ---- the review's findings: text split by child elements, comments and references -------------------------
    ("initrd-split-by-element", {"os": "<initrd><x/>/etc/shadow</initrd>"}, "invalid", "schema"),
    ("kernel-split-by-element", {"os": "<kernel>/var/lib/libvirt/boot/<x/>../../../etc/shadow</kernel>"},
     "invalid", "schema"),
    ("loader-split-by-comment", {"os": "<loader readonly='yes' type='pflash'>/usr/share/OVMF<!-- x -->/../../../etc/"
                                       "shadow</loader>"}, "refused", "os[1]/loader[1]"),
    ("nvram-split-by-pi", {"os": "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
                                 "<nvram>/var/lib/libvirt/qemu/nvram/<?pi x?>x_VARS.fd</nvram>"}, "refused",
     "os[1]/nvram[1]"),
    ("dtb-by-char-reference", {"os": "<dtb>&#x2f;etc/shadow</dtb>"}, "refused", "os[1]/dtb[1]"),
    ("acpi-table-in-cdata", {"os": "<acpi><table type='slic'><![CDATA[/etc/shadow]]></table></acpi>"}, "refused",
     "os[1]/acpi[1]/table[1]"),
    ("nvdimm-path", {"top": "<maxMemory slots='2' unit='MiB'>1024</maxMemory><cpu><numa><cell id='0' cpus='0' "
                            "memory='32' unit='MiB'/></numa></cpu>",
                     "devices": "<memory model='nvdimm'><source><path>/etc/shadow</path></source><target>"
                                "<size unit='MiB'>32</size><node>0</node></target></memory>"},
     "refused", "memory[1]/source[1]/path[1]"),
    ("name-split-by-element", {"attrs": "", "top": ""}, "invalid", "schema"),  # see NAME_SPLIT below
    ("namespaced-attribute", {"attrs": " xmlns:f='urn:x'", "devices": disk("file='/var/lib/libvirt/images/{vm}/"
                                                                           "a.img' f:file='/etc/shadow'")},
     "refused", "namespace"),
    ("doctype-entity", {}, "refused", "DOCTYPE"),  # see DOCTYPE below
    # ---- whole features the policy did not look at -------------------------------------------------------------
    ("sysinfo-fwcfg-file", {"top": "<sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo>"},
     "refused", "sysinfo[1]/entry[1]@file"),
    ("nvme-disk", {"devices": "<disk type='nvme' device='disk'><source type='pci' managed='yes' namespace='1'>"
                              "<address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source>"
                              "<target dev='vde' bus='virtio'/></disk>"}, "refused", "type 'nvme'"),
    ("seclabel-root", {"top": "<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>"},
     "refused", "seclabel"),
    ("seclabel-none", {"top": "<seclabel type='none'/>"}, "refused", "seclabel"),
    ("relative-disk", {"devices": disk("file='etc/shadow'")}, "invalid", "schema"),
    ("relative-log", {"devices": "<serial type='pty'><log file='etc/cron.d/x'/></serial>"}, "invalid", "schema"),
    ("other-vms-disk", {"devices": disk("file='/var/lib/libvirt/images/victim/disk.qcow2'")}, "refused",
     "own directory"),
    ("other-vms-flat-disk", {"devices": disk("file='/var/lib/libvirt/images/victim.qcow2'")}, "refused",
     "own directory"),
    ("longer-name-flat-disk", {"devices": disk("file='/var/lib/libvirt/images/{vm}.b.qcow2'")}, "refused",
     "own directory"),  # VM <vm>.b's disk, not this VM's
    ("other-vms-disk-read-only", {"devices": disk("file='/var/lib/libvirt/images/victim/disk.qcow2'",
                                                  extra="<readonly/>")}, "refused", "own directory"),
    ("shared-image-writable", {"devices": disk("file='/var/lib/libvirt/boot/base.img'")}, "refused",
     "own directory"),
    ("dotdot-out-of-own", {"devices": disk("file='/var/lib/libvirt/images/{vm}/../victim/d.img'")}, "refused",
     "normal form"),
    ("interface-script", {"devices": "<interface type='ethernet'><script path='/var/lib/libvirt/images/{vm}/up.sh'/>"
                                     "</interface>"}, "refused", "script"),
    ("backing-store-shadow", {"devices": "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                                         "<source file='/var/lib/libvirt/images/{vm}/a.qcow2'/><backingStore "
                                         "type='file'><format type='raw'/><source file='/etc/shadow'/>"
                                         "</backingStore><target dev='vda'/></disk>"}, "refused", "backingStore"),
    ("macvtap-host-nic", {"devices": "<interface type='direct'><source dev='ens1f0' mode='bridge'/></interface>"},
     "refused", "ens1f0"),  # the PF itself: a host NIC, not a VF
    ("macvtap-by-char-reference", {"devices": "<interface type='&#x64;irect'><source dev='ens1f0' mode='bridge'/>"
                                              "</interface>"}, "refused", "ens1f0"),
    ("bridge-not-configured", {"devices": "<interface type='bridge'><source bridge='br-mgmt'/></interface>"},
     "refused", "br-mgmt"),
    ("udp-to-bmc", {"devices": "<serial type='udp'><source mode='connect' host='127.0.0.1' service='623'/>"
                               "</serial>"}, "refused", "'udp'"),
    ("tcp-chardev", {"devices": "<channel type='tcp'><source mode='connect' host='10.0.0.1' service='22'/>"
                                "<target type='virtio' name='x'/></channel>"}, "refused", "'tcp'"),
    ("user-networking", {"devices": "<interface type='user'/>"}, "refused", "'user'"),
    ("memory-inf", {}, "invalid", "memory"),  # see MEMORY_INF below
    ("nested-10000-deep", {"top": "<metadata>" + "<m:a xmlns:m='urn:m'>" * 10000 + "</m:a>" * 10000 + "</metadata>"},
     "invalid", "nested deeper"),  # was a RecursionError: a 500
    ("qemu-commandline", {"attrs": " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'",
                          "top": "<qemu:commandline><qemu:arg value='-boot'/></qemu:commandline>"},
     "refused", "qemu:commandline"),
    ("host-block-device", {"devices": disk("dev='/dev/sda'", kind="block")}, "refused", "type 'block'"),
    ("pci-not-a-vf", {"devices": "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0x3b' "
                                 "slot='0' function='0'/></source></hostdev>"}, "refused", "hostdev[1]"),
    ("emulator-shell", {"devices": "<emulator>/bin/sh</emulator>"}, "refused", "emulator"),
    ("realtime-vcpu", {"top": "<cputune><vcpusched vcpus='0' scheduler='fifo' priority='1'/></cputune>"},
     "refused", "real-time"),
    ("shmem", {"devices": "<shmem name='shared0'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>"},
     "refused", "shmem"),
    ("vnc-on-every-address", {"devices": "<graphics type='vnc' listen='0.0.0.0'/>"}, "refused", "0.0.0.0"),
    ("evdev-passthrough", {"devices": "<input type='passthrough' bus='virtio'><source evdev='/dev/input/event0'/>"
                                      "</input>"}, "refused", "input"),
    ("tpm-passthrough", {"devices": "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/>"
                                    "</backend></tpm>"}, "refused", "TPM"),
    ("rng-from-disk", {"devices": "<rng model='virtio'><backend model='random'>/dev/sda</backend></rng>"},
     "refused", "RNG"),
    ("lease-file", {"devices": "<lease><lockspace>x</lockspace><key>k</key><target path='/etc/shadow'/></lease>"},
     "refused", "lease"),
    # ---- what must still pass ----------------------------------------------------------------------------------
    ("own-disk-and-nvram", {"os": "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
                                  "<nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/"
                                  "{vm}_VARS.fd</nvram>",
                            "devices": disk("file='/var/lib/libvirt/images/{vm}/disk0.qcow2'")}, "allowed", ""),
    ("virt-install-flat-disk", {"devices": disk("file='/var/lib/libvirt/images/{vm}.qcow2'")}, "allowed", ""),
    ("shared-iso", {"devices": disk("file='/var/lib/libvirt/boot/debian.iso'", device="cdrom",
                                    extra="<readonly/>")}, "allowed", ""),
    ("rbd-and-pty", {"devices": disk("protocol='rbd' name='vms/{vm}'", kind="network") +
                     "<serial type='pty'><log file='/var/lib/libvirt/images/{vm}/console.log'/></serial>"},
     "allowed", ""),
    ("vf-hostdev-and-macvtap", {"devices": "<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' "
                                           "bus='0x3c' slot='0x00' function='0x1'/></source></hostdev>"
                                           "<interface type='direct'><source dev='ens1f0v2' mode='passthrough'/>"
                                           "</interface>"}, "allowed", ""),
    ("agent-socket-rng-vnc", {"devices": "<channel type='unix'><source mode='bind' path='/var/lib/libvirt/images/"
                                         "{vm}/agent.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/>"
                                         "</channel><rng model='virtio'><backend model='random'>/dev/urandom"
                                         "</backend></rng><graphics type='vnc' listen='127.0.0.1' passwd='pw'/>"},
     "allowed", ""),
    ("bridge-configured-and-network", {"devices": "<interface type='bridge'><source bridge='vmbr0'/></interface>"
                                                  "<interface type='network'><source network='default'/></interface>"},
     "allowed", ""),
    ("comments-and-free-text", {"top": "<description>/etc/shadow</description><!-- a comment -->",
                                "os": "<cmdline>root=/dev/vda console=ttyS0</cmdline>"}, "allowed", ""),
]

#: Texts the template cannot make.
NAME_SPLIT = "<domain type='test'><name>{vm}<x/>b</name><memory>65536</memory><os><type>hvm</type></os></domain>"
DOCTYPE = "<!DOCTYPE d [<!ENTITY e SYSTEM 'file:///etc/shadow'>]>" + document("{vm}", os="<kernel>&e;</kernel>")
MEMORY_INF = document("{vm}").replace("<memory unit='MiB'>64</memory>", "<memory>inf</memory>")
_WHOLE = {"name-split-by-element": NAME_SPLIT, "doctype-entity": DOCTYPE, "memory-inf": MEMORY_INF}


def case_xml(case_id: str, parts: dict, vm: str) -> str:
    """The text of one case for VM ``vm``."""
    if case_id in _WHOLE:
        return _WHOLE[case_id].replace("{vm}", vm)
    return document(vm, **{k: v.replace("{vm}", vm) for k, v in parts.items()})
