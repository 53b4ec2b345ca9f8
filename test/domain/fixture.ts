// A qubes.xml shaped like the ones Qubes R4 writes (lxml, two-space indent,
// attributes sorted, booleans True, properties by name), written for these
// tests: a TemplateVM, an AppVM, a disposable template (AppVM with
// template_for_dispvms), a DispVM, a StandaloneVM on lvm_thin, and the pools
// varlibqubes (file), reflink (file-reflink), lvm (lvm_thin) and
// linux-kernel.
import { MiB } from '../helpers/data.js';

export interface FixtureDirs {
  /** dir_path of the file pool `varlibqubes`. */
  fileDir: string;
  /** dir_path of the file-reflink pool `reflink`. */
  reflinkDir: string;
  /** setup_check of the reflink pool. */
  reflinkCheck: boolean;
  /** dir_path of the linux-kernel pool. */
  kernelDir: string;
}

export const KERNEL = '6.6.48-1.fc37';
export const FIXTURE_ROOT = 8 * MiB;
export const FIXTURE_PRIVATE = 4 * MiB;

export function qubesXml(d: FixtureDirs): string {
  const R = FIXTURE_ROOT;
  const P = FIXTURE_PRIVATE;
  const kernelVolume = `        <volume name="kernel" pool="linux-kernel" revisions_to_keep="0" size="0" vid="${KERNEL}"/>`;
  const label = (i: number, color: string, name: string) => `    <label color="${color}" id="label-${i}">${name}</label>`;
  return `<?xml version='1.0' encoding='UTF-8'?>
<qubes version="3.0">
  <labels>
${label(1, '0xcc0000', 'red')}
${label(2, '0xf57900', 'orange')}
${label(3, '0xedd400', 'yellow')}
${label(4, '0x73d216', 'green')}
${label(5, '0x555753', 'gray')}
${label(6, '0x3465a4', 'blue')}
${label(7, '0x75507b', 'purple')}
${label(8, '0x000000', 'black')}
  </labels>
  <pools>
    <pool dir_path="${d.fileDir}" driver="file" name="varlibqubes" revisions_to_keep="1"/>
    <pool dir_path="${d.reflinkDir}" driver="file-reflink" name="reflink" setup_check="${d.reflinkCheck ? 'True' : 'False'}"/>
    <pool driver="lvm_thin" name="lvm" revisions_to_keep="2" thin_pool="pool00" volume_group="qubes_dom0"/>
    <pool dir_path="${d.kernelDir}" driver="linux-kernel" name="linux-kernel"/>
  </pools>
  <properties>
    <property name="clockvm">sys-net</property>
    <property name="default_dispvm">fedora-40-dvm</property>
    <property name="default_kernel">${KERNEL}</property>
    <property name="default_pool">reflink</property>
    <property name="default_pool_kernel">linux-kernel</property>
    <property name="default_template">fedora-40</property>
    <property name="updatevm">sys-net</property>
  </properties>
  <domains>
    <domain id="domain-0" class="AdminVM">
      <properties>
        <property name="label">black</property>
      </properties>
      <features>
        <feature name="gui-default-secure-copy-sequence">Ctrl-Shift-c</feature>
      </features>
      <tags/>
    </domain>
    <domain id="domain-1" class="TemplateVM">
      <properties>
        <property name="installed_by_rpm">True</property>
        <property name="label">black</property>
        <property name="name">fedora-40</property>
        <property name="qid">1</property>
        <property name="uuid">8f3c1a52-6a07-4a55-9d1e-2f8e0a4c7b10</property>
      </properties>
      <features>
        <feature name="os">Linux</feature>
        <feature name="qrexec">1</feature>
      </features>
      <devices class="pci"/>
      <devices class="block"/>
      <devices class="usb"/>
      <tags>
        <tag name="audiovm-dom0"/>
        <tag name="created-by-dom0"/>
      </tags>
      <volume-config>
        <volume name="root" pool="reflink" revisions_to_keep="1" rw="True" save_on_stop="True" size="${R}" vid="vm-templates/fedora-40/root"/>
        <volume name="private" pool="reflink" revisions_to_keep="0" rw="True" save_on_stop="True" size="${P}" vid="vm-templates/fedora-40/private"/>
        <volume name="volatile" pool="reflink" revisions_to_keep="0" rw="True" size="${R}" vid="vm-templates/fedora-40/volatile"/>
${kernelVolume}
      </volume-config>
    </domain>
    <domain id="domain-2" class="AppVM">
      <properties>
        <property name="label">blue</property>
        <property name="memory">800</property>
        <property name="name">work</property>
        <property name="netvm">sys-net</property>
        <property name="qid">2</property>
        <property name="template">fedora-40</property>
        <property name="uuid">0b7d4e8c-3f21-4c6a-8e55-91d2a7f3c604</property>
      </properties>
      <features>
        <feature name="service.cups">1</feature>
      </features>
      <devices class="pci"/>
      <devices class="block"/>
      <devices class="usb"/>
      <tags>
        <tag name="created-by-dom0"/>
      </tags>
      <volume-config>
        <volume name="root" pool="reflink" revisions_to_keep="0" rw="True" size="${R}" snap_on_start="True" source="vm-templates/fedora-40/root" vid="appvms/work/root"/>
        <volume name="private" pool="varlibqubes" revisions_to_keep="1" rw="True" save_on_stop="True" size="${P}" vid="appvms/work/private"/>
        <volume name="volatile" pool="reflink" revisions_to_keep="0" rw="True" size="${R}" vid="appvms/work/volatile"/>
${kernelVolume}
      </volume-config>
    </domain>
    <domain id="domain-3" class="AppVM">
      <properties>
        <property name="label">red</property>
        <property name="name">fedora-40-dvm</property>
        <property name="qid">3</property>
        <property name="template">fedora-40</property>
        <property name="template_for_dispvms">True</property>
        <property name="uuid">5e2a9c11-7b34-4f0d-a6c8-d3e1f0b92a77</property>
      </properties>
      <features>
        <feature name="appmenus-dispvm">1</feature>
      </features>
      <devices class="pci"/>
      <devices class="block"/>
      <devices class="usb"/>
      <tags>
        <tag name="created-by-dom0"/>
      </tags>
      <volume-config>
        <volume name="root" pool="reflink" revisions_to_keep="0" rw="True" size="${R}" snap_on_start="True" source="vm-templates/fedora-40/root" vid="appvms/fedora-40-dvm/root"/>
        <volume name="private" pool="reflink" revisions_to_keep="0" rw="True" save_on_stop="True" size="${P}" vid="appvms/fedora-40-dvm/private"/>
        <volume name="volatile" pool="reflink" revisions_to_keep="0" rw="True" size="${R}" vid="appvms/fedora-40-dvm/volatile"/>
${kernelVolume}
      </volume-config>
    </domain>
    <domain id="domain-4" class="DispVM">
      <properties>
        <property name="auto_cleanup">True</property>
        <property name="label">red</property>
        <property name="name">disp4711</property>
        <property name="qid">4</property>
        <property name="template">fedora-40-dvm</property>
        <property name="uuid">c41f0e27-98ab-4d3c-b1e6-0a5d7c2f8e93</property>
      </properties>
      <features/>
      <devices class="pci"/>
      <devices class="block"/>
      <devices class="usb"/>
      <tags>
        <tag name="created-by-dom0"/>
        <tag name="disposable-created-by-work"/>
      </tags>
      <volume-config>
        <volume name="root" pool="reflink" revisions_to_keep="0" rw="True" size="${R}" snap_on_start="True" source="vm-templates/fedora-40/root" vid="appvms/disp4711/root"/>
        <volume name="private" pool="reflink" revisions_to_keep="0" rw="True" size="${P}" snap_on_start="True" source="appvms/fedora-40-dvm/private" vid="appvms/disp4711/private"/>
        <volume name="volatile" pool="reflink" revisions_to_keep="0" rw="True" size="${R + P}" vid="appvms/disp4711/volatile"/>
${kernelVolume}
      </volume-config>
    </domain>
    <domain id="domain-5" class="StandaloneVM">
      <properties>
        <property name="label">red</property>
        <property name="name">sys-net</property>
        <property name="provides_network">True</property>
        <property name="qid">5</property>
        <property name="uuid">17d0b3e5-2c48-4e9a-8f61-b5a4c3d2e1f0</property>
        <property name="virt_mode">hvm</property>
      </properties>
      <features>
        <feature name="servicevm">1</feature>
      </features>
      <devices class="pci">
        <device backend-domain="dom0" id="00_14.3">
          <option name="no-strict-reset">True</option>
        </device>
      </devices>
      <devices class="block"/>
      <devices class="usb"/>
      <tags/>
      <volume-config>
        <volume name="root" pool="lvm" revisions_to_keep="2" rw="True" save_on_stop="True" size="${R}" vid="qubes_dom0/vm-sys-net-root"/>
        <volume name="private" pool="lvm" revisions_to_keep="2" rw="True" save_on_stop="True" size="${P}" vid="qubes_dom0/vm-sys-net-private"/>
        <volume name="volatile" pool="lvm" revisions_to_keep="0" rw="True" size="${R}" vid="qubes_dom0/vm-sys-net-volatile"/>
${kernelVolume}
      </volume-config>
    </domain>
  </domains>
</qubes>
`;
}
